"""The corpus: a streaming validation pass, then a Ray Dataset of (doc_id, title, text)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vectune.data._files import filesystem, id_value, read_records, text_value
from vectune.errors import DataError
from vectune.spec.data import CorpusSource


def doc_text(title: str | None, text: str | None) -> str:
    """BEIR/MTEB convention: title, a space, text (either may be empty)."""
    return f"{title or ''} {text or ''}".strip()


class CorpusIds(AbstractSet):
    """The corpus's document ids, held compactly for a driver that must not grow with the
    corpus: the ids in file order as one Arrow string array, and a sorted 64-bit key per id
    with its position, for exact membership by binary search. About 30 bytes a document
    (1M ids of ~10 characters: ~30 MB) where a `set` of `str` takes ~100.

    A read-only set (`collections.abc.Set`: `in`, `len`, comparisons, `|` and `-` giving plain
    sets), iterated in file order, plus `isin` for a batch. Keys are Python's own string hash,
    which differs between processes: a copy sent to another process rebuilds them there from
    the ids."""

    _CHUNK = 65_536

    def __init__(self, ids: pa.Array):
        self._ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        keys = np.empty(len(self._ids), dtype=np.int64)
        for start in range(0, len(self._ids), self._CHUNK):
            chunk = self._ids.slice(start, self._CHUNK).to_pylist()
            keys[start:start + len(chunk)] = np.fromiter(map(hash, chunk), dtype=np.int64, count=len(chunk))
        self._order = np.argsort(keys, kind="stable").astype(np.uint32 if len(keys) < 2**32 else np.int64)
        self._keys = keys[self._order]

    @classmethod
    def of(cls, ids: Iterable[str]) -> "CorpusIds":
        return cls(pa.array([str(d) for d in ids], type=pa.string()))

    @classmethod
    def _from_iterable(cls, it) -> set:
        return set(it)  # what a set operation makes is small and plain

    def __reduce__(self):
        return CorpusIds, (self._ids,)

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self._ids), self._CHUNK):
            yield from self._ids.slice(start, self._CHUNK).to_pylist()

    def __contains__(self, doc_id) -> bool:
        if not isinstance(doc_id, str):
            return False
        key = hash(doc_id)
        i = int(np.searchsorted(self._keys, key))
        while i < len(self._keys) and self._keys[i] == key:  # equal keys: compare the ids themselves
            if self._ids[int(self._order[i])].as_py() == doc_id:
                return True
            i += 1
        return False

    def isin(self, doc_ids: list[str]) -> np.ndarray:
        """Whether each of `doc_ids` is a corpus id: one boolean per id, exact."""
        if not doc_ids or not len(self._keys):
            return np.zeros(len(doc_ids), dtype=bool)
        keys = np.fromiter(map(hash, doc_ids), dtype=np.int64, count=len(doc_ids))
        at = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        hit = self._keys[at] == keys
        # the id at the first equal key is the same string but for a hash collision, checked
        # by Arrow in one pass; the rare collision is settled one id at a time
        same = pc.equal(pa.array(doc_ids, type=pa.string()), self._ids.take(pa.array(self._order[at]))) \
            .to_numpy(zero_copy_only=False)
        out = hit & same
        for j in np.flatnonzero(hit & ~same):
            out[j] = doc_ids[j] in self
        return out

    def first_duplicate(self) -> int | None:
        """The file position of the first id that repeats an earlier one, or None."""
        equal = np.flatnonzero(self._keys[1:] == self._keys[:-1])
        later = [max(int(self._order[i]), int(self._order[i + 1])) for i in equal
                 if self._ids[int(self._order[i])].as_py() == self._ids[int(self._order[i + 1])].as_py()]
        if not later:
            return None
        return min(later)

    def at(self, position: int) -> str:
        return self._ids[position].as_py()


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
    it learnt (`info`: count, sha256, ids, after the duplicate check)."""

    def __init__(self, source: CorpusSource, path: str):
        self.source, self.path = source, path
        self.hasher = hashlib.sha256()
        self.chunks: list[pa.Array] = []
        self.numbers: list[np.ndarray] = []

    def documents(self) -> Iterator[tuple[str, str | None, str]]:
        """(doc_id, title, text) of each document, after its checks."""
        source, path = self.source, self.path
        unit = "row" if source.format == "parquet" else "line"
        chunk: list[str] = []
        nums: list[int] = []
        for number, record in _records(source, path, self.hasher):
            doc_id = id_value(path, number, record, source.id_field, what="document id")
            if doc_id is None:
                raise DataError(path, f"{unit} has no document id (field {source.id_field!r})", number)
            title = text_value(path, number, record, source.title_field) if source.title_field else None
            text = doc_text(title, text_value(path, number, record, source.text_field))
            if not text:
                raise DataError(path, f"document {doc_id!r} has empty text", number)
            chunk.append(doc_id)
            nums.append(number)
            if len(chunk) >= CorpusIds._CHUNK:
                self.chunks.append(pa.array(chunk, type=pa.string()))
                self.numbers.append(np.asarray(nums, dtype=np.int64))
                chunk, nums = [], []
            yield doc_id, title, text
        if chunk:
            self.chunks.append(pa.array(chunk, type=pa.string()))
            self.numbers.append(np.asarray(nums, dtype=np.int64))

    def info(self) -> CorpusInfo:
        if not self.chunks:
            raise DataError(self.path, "the corpus has no documents")
        ids = CorpusIds(pa.chunked_array(self.chunks, type=pa.string()))
        repeat = ids.first_duplicate()
        if repeat is not None:
            raise DataError(self.path, f"duplicate document id {ids.at(repeat)!r}",
                            int(np.concatenate(self.numbers)[repeat]))
        return CorpusInfo(path=self.path, count=len(ids), sha256=self.hasher.hexdigest(), ids=ids)


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
