"""The corpus: a streaming validation pass, then a Ray Dataset of (doc_id, title, text)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow as pa

from vectune.data._files import filesystem, id_value, read_records, text_value
from vectune.errors import DataError
from vectune.spec.data import CorpusSource


def doc_text(title: str | None, text: str | None) -> str:
    """BEIR/MTEB convention: title, a space, text (either may be empty)."""
    return f"{title or ''} {text or ''}".strip()


@dataclass
class CorpusInfo:
    """What the validation pass learnt about the corpus (ids only, never texts)."""

    path: str
    count: int
    sha256: str
    ids: set[str] = field(repr=False, default_factory=set)


def _records(source: CorpusSource, path: str, hasher) -> Iterator[tuple[int, dict]]:
    """(line or row number, record) for each document, with JSON errors located."""
    fields = [source.id_field, source.text_field] + ([source.title_field] if source.title_field else [])
    parquet = source.format == "parquet"
    return read_records(path, parquet=parquet, columns=fields if parquet else None, hasher=hasher)


def check_corpus(source: CorpusSource, path: str) -> CorpusInfo:
    """Stream the corpus once: ids unique and present, text non-empty, UTF-8, valid JSON.

    Holds only the document ids in memory. Raises DataError naming file and line.
    """
    hasher = hashlib.sha256()
    ids: set[str] = set()
    unit = "row" if source.format == "parquet" else "line"
    for number, record in _records(source, path, hasher):
        doc_id = id_value(path, number, record, source.id_field, what="document id")
        if doc_id is None:
            raise DataError(path, f"{unit} has no document id (field {source.id_field!r})", number)
        if doc_id in ids:
            raise DataError(path, f"duplicate document id {doc_id!r}", number)
        title = text_value(path, number, record, source.title_field) if source.title_field else None
        if not doc_text(title, text_value(path, number, record, source.text_field)):
            raise DataError(path, f"document {doc_id!r} has empty text", number)
        ids.add(doc_id)
    if not ids:
        raise DataError(path, "the corpus has no documents")
    return CorpusInfo(path=path, count=len(ids), sha256=hasher.hexdigest(), ids=ids)


def iter_corpus(source: CorpusSource, path: str, size: int = 4096) -> Iterator[dict[str, list[str]]]:
    """The corpus `size` documents at a time (doc_id, title, text: the columns, and the texts,
    of `read_corpus`'s Dataset), streamed in this process: only one batch is held. Assumes a
    corpus `check_corpus` has passed."""
    fields = [source.id_field, source.text_field] + ([source.title_field] if source.title_field else [])
    parquet = source.format == "parquet"
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    for _, record in read_records(path, parquet=parquet, columns=fields if parquet else None):
        title = record.get(source.title_field) if source.title_field else None
        ids.append(str(record[source.id_field]))
        titles.append(title or "")
        texts.append(doc_text(title, record.get(source.text_field)))
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
