"""The corpus: a streaming validation pass, then a Ray Dataset of (doc_id, title, text)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import weakref
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from vectune.data._files import filesystem, id_value, read_records, text_value
from vectune.errors import DataError
from vectune.spec.data import CorpusSource


def doc_text(title: str | None, text: str | None) -> str:
    """BEIR/MTEB convention: title, a space, text (either may be empty)."""
    return f"{title or ''} {text or ''}".strip()


class _Spill:
    """Arrow string arrays appended to a temporary file that is unlinked as soon as it is made
    (nothing is left behind, even by a kill), read back one array at a time with `pread`: the
    ids of a corpus held on disk, never in the driver's memory."""

    _SCHEMA = pa.schema([("id", pa.string())])

    def __init__(self):
        fd, path = tempfile.mkstemp(prefix="vectune-ids-")
        os.unlink(path)
        self._fd, self._spans, self._end = fd, [], 0
        self._close = weakref.finalize(self, os.close, fd)

    def append(self, ids: pa.Array) -> None:
        data = memoryview(pa.record_batch([ids], schema=self._SCHEMA).serialize())
        done = 0
        while done < len(data):
            done += os.pwrite(self._fd, data[done:], self._end + done)
        self._spans.append((self._end, len(data)))
        self._end += len(data)

    def __len__(self) -> int:
        return len(self._spans)

    def __getitem__(self, i: int) -> pa.Array:
        at, size = self._spans[i]
        parts, done = [], 0
        while done < size:
            part = os.pread(self._fd, size - done, at + done)
            if not part:
                raise OSError("the corpus id spill file ends early")
            parts.append(part)
            done += len(part)
        return pa.ipc.read_record_batch(pa.py_buffer(b"".join(parts)), self._SCHEMA).column(0)


class CorpusIds(AbstractSet):
    """The corpus's document ids, for a driver that must not grow with the corpus: in memory,
    one sorted 64-bit key per id (8 bytes a document, whatever the ids' length); the ids
    themselves, in file order, in chunks of `_CHUNK` (on disk, `_Spill`, for a corpus read by
    `check_corpus`), read back one chunk at a time when iterated.

    A read-only set (`collections.abc.Set`: `in`, `len`, comparisons, `|` and `-` giving plain
    sets), iterated in file order, plus `isin` for a batch. Membership compares keys (Python's
    64-bit string hash): a string that is not an id is taken for one only if its key equals an
    id's, with a chance of about n / 2**64 (5e-14 at a million ids); the duplicate check, whose
    answer refuses a corpus, compares the ids themselves. Keys differ between processes: a copy
    sent to another process carries the ids and rebuilds its keys there."""

    _CHUNK = 65_536

    def __init__(self, chunks, keys: np.ndarray):
        self._chunks, self._keys = chunks, keys
        self._count = len(keys)

    @staticmethod
    def keys_of(ids: list[str]) -> np.ndarray:
        return np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids))

    @classmethod
    def of(cls, ids: Iterable[str]) -> "CorpusIds":
        """Ids held in memory (a small set, or a copy received from another process)."""
        ids = [str(d) for d in ids]
        chunks = [pa.array(ids[i:i + cls._CHUNK], type=pa.string()) for i in range(0, len(ids), cls._CHUNK)]
        keys = cls.keys_of(ids)
        keys.sort()
        return cls(chunks, keys)

    @classmethod
    def _from_iterable(cls, it) -> set:
        return set(it)  # what a set operation makes is small and plain

    def __reduce__(self):
        return CorpusIds.of, (list(self),)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self._chunks)):
            yield from self._chunks[i].to_pylist()

    def __contains__(self, doc_id) -> bool:
        if not isinstance(doc_id, str) or not self._count:
            return False
        key = hash(doc_id)
        i = int(np.searchsorted(self._keys, key))
        return i < self._count and int(self._keys[i]) == key

    def isin(self, doc_ids: list[str]) -> np.ndarray:
        """Whether each of `doc_ids` is a corpus id: one boolean per id."""
        if not doc_ids or not self._count:
            return np.zeros(len(doc_ids), dtype=bool)
        keys = self.keys_of([str(d) for d in doc_ids])
        at = np.minimum(np.searchsorted(self._keys, keys), self._count - 1)
        return self._keys[at] == keys

    def first_duplicate(self) -> int | None:
        """The file position of the first id that repeats an earlier one, or None. Equal keys
        name the candidates; one pass over the ids compares those ids themselves."""
        suspects = np.unique(self._keys[1:][self._keys[1:] == self._keys[:-1]])
        if not len(suspects):
            return None
        seen: set[str] = set()
        for i in range(len(self._chunks)):
            chunk = self._chunks[i].to_pylist()
            keys = self.keys_of(chunk)
            hit = np.flatnonzero(np.isin(keys, suspects))
            for j in hit.tolist():
                if chunk[j] in seen:
                    return i * self._CHUNK + j
                seen.add(chunk[j])
        return None

    def at(self, position: int) -> str:
        return self._chunks[position // self._CHUNK][position % self._CHUNK].as_py()


@dataclass
class CorpusInfo:
    """What the validation pass learnt about the corpus (ids only, never texts)."""

    path: str
    count: int
    sha256: str
    ids: CorpusIds = field(repr=False, default_factory=lambda: CorpusIds.of([]))


def _records(source: CorpusSource, path: str, hasher) -> Iterator[tuple[int, dict]]:
    """(line or row number, record) for each document, with JSON errors located."""
    fields = [source.id_field, source.text_field] + ([source.title_field] if source.title_field else [])
    parquet = source.format == "parquet"
    return read_records(path, parquet=parquet, columns=fields if parquet else None, hasher=hasher)


def check_corpus(source: CorpusSource, path: str) -> CorpusInfo:
    """Stream the corpus once: ids unique and present, text non-empty, UTF-8, valid JSON.

    Holds only the document ids in memory, compactly (`CorpusIds`). Raises DataError naming
    file and line (a repeated id: the line of its first repetition, found once the pass ends).
    """
    pass_ = _CheckPass(source, path)
    for _ in pass_.documents():
        pass
    return pass_.info()


def checked_batches(source: CorpusSource, path: str, size: int, done: list) -> Iterator[dict[str, list[str]]]:
    """`iter_corpus`'s batches from `check_corpus`'s pass: each document is checked as it is
    read, and once the last batch is taken the pass's `CorpusInfo` is appended to `done` (its
    duplicate ids are found then, so a caller acts on the batches only after the pass ends).
    For a caller that reads the whole corpus anyway: one parse instead of two."""
    pass_ = _CheckPass(source, path)
    yield from _batches(pass_.documents(), size)
    done.append(pass_.info())


class _CheckPass:
    """One validation pass over the corpus file: its documents, checked one by one, then what
    it learnt (`info`: count, sha256, ids, after the duplicate check). The ids go to a spill
    file a chunk at a time as they are read, with a key each in memory (`CorpusIds`)."""

    def __init__(self, source: CorpusSource, path: str):
        self.source, self.path = source, path
        self.hasher = hashlib.sha256()
        self.spill = _Spill()
        self.keys: list[np.ndarray] = []

    def _keep(self, chunk: list[str]) -> None:
        self.spill.append(pa.array(chunk, type=pa.string()))
        self.keys.append(CorpusIds.keys_of(chunk))

    def documents(self) -> Iterator[tuple[str, str | None, str]]:
        """(doc_id, title, text) of each document, after its checks."""
        source, path = self.source, self.path
        unit = "row" if source.format == "parquet" else "line"
        chunk: list[str] = []
        for number, record in _records(source, path, self.hasher):
            doc_id = id_value(path, number, record, source.id_field, what="document id")
            if doc_id is None:
                raise DataError(path, f"{unit} has no document id (field {source.id_field!r})", number)
            title = text_value(path, number, record, source.title_field) if source.title_field else None
            text = doc_text(title, text_value(path, number, record, source.text_field))
            if not text:
                raise DataError(path, f"document {doc_id!r} has empty text", number)
            chunk.append(doc_id)
            if len(chunk) >= CorpusIds._CHUNK:
                self._keep(chunk)
                chunk = []
            yield doc_id, title, text
        if chunk:
            self._keep(chunk)

    def info(self) -> CorpusInfo:
        if not self.keys:
            raise DataError(self.path, "the corpus has no documents")
        keys = np.concatenate(self.keys)
        self.keys = []
        keys.sort()
        ids = CorpusIds(self.spill, keys)
        repeat = ids.first_duplicate()
        if repeat is not None:
            raise DataError(self.path, f"duplicate document id {ids.at(repeat)!r}", self._number(repeat))
        return CorpusInfo(path=self.path, count=len(ids), sha256=self.hasher.hexdigest(), ids=ids)

    def _number(self, position: int) -> int:
        """The line (or row) number of the document at `position`: the file read again up to
        it (only to name a repeated id's line; the pass keeps no number per document)."""
        for i, (number, _) in enumerate(_records(self.source, self.path, None)):
            if i == position:
                return number
        raise AssertionError(f"{self.path}: no document at position {position}")


def iter_corpus(source: CorpusSource, path: str, size: int = 4096) -> Iterator[dict[str, list[str]]]:
    """The corpus `size` documents at a time (doc_id, title, text: the columns, and the texts,
    of `read_corpus`'s Dataset), streamed in this process: only one batch is held. Assumes a
    corpus `check_corpus` has passed."""
    fields = [source.id_field, source.text_field] + ([source.title_field] if source.title_field else [])
    parquet = source.format == "parquet"

    def documents():
        for _, record in read_records(path, parquet=parquet, columns=fields if parquet else None):
            title = record.get(source.title_field) if source.title_field else None
            yield str(record[source.id_field]), title, doc_text(title, record.get(source.text_field))

    return _batches(documents(), size)


def _batches(documents: Iterable[tuple[str, str | None, str]], size: int) -> Iterator[dict[str, list[str]]]:
    """(doc_id, title, text) triples as columns `size` documents at a time (a missing title: "")."""
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    for doc_id, title, text in documents:
        ids.append(doc_id)
        titles.append(title or "")
        texts.append(text)
        if len(ids) >= size:
            yield {"doc_id": ids, "title": titles, "text": texts}
            ids, titles, texts = [], [], []
    if ids:
        yield {"doc_id": ids, "title": titles, "text": texts}


class _ParseJsonl:
    """Ray Data UDF: raw JSONL lines -> doc_id, title, text (already validated)."""

    def __init__(self, id_field: str, title_field: str | None, text_field: str):
        self.id_field, self.title_field, self.text_field = id_field, title_field, text_field

    def __call__(self, batch: dict) -> dict:
        ids, titles, texts = [], [], []
        for line in batch["text"]:
            if not line.strip():
                continue
            record = json.loads(line)
            title = record.get(self.title_field) if self.title_field else None
            ids.append(str(record[self.id_field]))
            titles.append(title or "")
            texts.append(doc_text(title, record.get(self.text_field)))
        return {"doc_id": ids, "title": titles, "text": texts}


#: read tasks take a CPU sliver: encoder actors may hold the rest, and a read task
#: waiting for a whole CPU would hang the pipeline (STACK-NOTES: the Ray Data hang)
_READ_ARGS = {"num_cpus": 0.1}


def read_corpus(source: CorpusSource, path: str, *, blocks: int | None = None):
    """The corpus as a streaming Ray Dataset with columns doc_id, title, text.

    Args:
        source: the spec's corpus section.
        path: its resolved path or URI.
        blocks: read parallelism (so several encoder actors get work from one file).
    """
    import ray.data

    fs, inner = filesystem(path)
    if source.format == "parquet":
        cols = [source.id_field, source.text_field] + ([source.title_field] if source.title_field else [])
        ds = ray.data.read_parquet(inner, filesystem=fs, columns=cols, override_num_blocks=blocks,
                                   **_READ_ARGS)
        parse = _ParseParquet(source.id_field, source.title_field, source.text_field)
        return ds.map_batches(parse, batch_format="pyarrow", num_cpus=0.1)
    ds = ray.data.read_datasource(_json_lines()(inner, filesystem=fs), override_num_blocks=blocks, **_READ_ARGS)
    parse = _ParseJsonl(source.id_field, source.title_field, source.text_field)
    return ds.map_batches(parse, num_cpus=0.1)


def _json_lines():
    """A Ray Data file source of JSONL lines split at `\\n` only, as `check_corpus` splits
    them: Ray's `read_text` splits at every `str.splitlines()` boundary, so a document
    whose text holds U+2028, U+2029 or U+0085 (valid inside a JSON string) broke in two."""
    from ray.data.datasource import FileBasedDatasource

    class JsonLines(FileBasedDatasource):
        def _read_stream(self, f, path: str):
            pending = b""
            while chunk := f.read(1 << 22):
                *lines, pending = (pending + chunk).split(b"\n")
                rows = [line.rstrip(b"\r").decode("utf-8") for line in lines if line.strip()]
                if rows:
                    yield pa.table({"text": rows})
            if pending.strip():
                yield pa.table({"text": [pending.rstrip(b"\r").decode("utf-8")]})

    return JsonLines


class _ParseParquet:
    def __init__(self, id_field: str, title_field: str | None, text_field: str):
        self.id_field, self.title_field, self.text_field = id_field, title_field, text_field

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = table.to_pydict()
        n = table.num_rows
        titles = rows.get(self.title_field) if self.title_field else [None] * n
        return pa.table(
            {
                "doc_id": [str(v) for v in rows[self.id_field]],
                "title": [t or "" for t in titles],
                "text": [doc_text(t, x) for t, x in zip(titles, rows[self.text_field])],
            }
        )
