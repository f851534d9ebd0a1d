"""The `data` section: where the corpus, queries and relevance labels live."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Literal

from pydantic import AliasChoices, Field, model_validator

from vectune.spec._base import Section

CorpusFormat = Literal["beir", "jsonl", "parquet"]
LabelFormat = Literal["qrels", "pairs", "clicks"]


def _suffix(path: str) -> str:
    return PurePosixPath(path.split("?", 1)[0]).suffix.lower()


class CorpusSource(Section):
    """A document collection: one row per document.

    `beir` is JSONL with `_id`, `title`, `text`; `jsonl` and `parquet` read the
    fields named below. Document text is `title + " " + text` (BEIR/MTEB).
    """

    path: str
    format: CorpusFormat | None = Field(None, description="Inferred from the file suffix when omitted.")
    id_field: str = "_id"
    title_field: str | None = "title"
    text_field: str = "text"

    @model_validator(mode="after")
    def _infer_format(self) -> "CorpusSource":
        if self.format is None:
            suffix = _suffix(self.path)
            if suffix in (".parquet", ".pq"):
                self.format = "parquet"
            elif suffix in (".jsonl", ".json", ".ndjson"):
                self.format = "beir" if self.id_field == "_id" else "jsonl"
            else:
                raise ValueError(
                    f"cannot infer the format of {self.path!r} from its suffix; set `format` "
                    "to one of beir, jsonl, parquet"
                )
        return self


class QuerySource(Section):
    """Query texts by id (BEIR queries.jsonl, or JSONL/parquet with the fields named)."""

    path: str
    format: CorpusFormat | None = None
    id_field: str = "_id"
    text_field: str = "text"

    @model_validator(mode="after")
    def _infer_format(self) -> "QuerySource":
        if self.format is None:
            self.format = "parquet" if _suffix(self.path) in (".parquet", ".pq") else "beir"
        return self


class LabelSource(Section):
    """Relevance labels.

    - `qrels`: BEIR/TREC TSV `query-id  corpus-id  score` (header optional, CRLF or LF).
    - `pairs`: JSONL or parquet rows with `query` (text) and `positive` (a corpus id);
      an optional `query_id` column names the query, otherwise one is derived from its text.
    - `clicks`: JSONL or parquet click-log rows `query`, `doc_id`, `clicked`, `position`
      (optional `query_id`); clicked documents are positives, shown-but-unclicked
      ones are candidate negatives (used by the mine stage).
    """

    path: str
    format: LabelFormat | None = None
    min_relevance: int = Field(
        1, ge=-1000, le=1000, validation_alias=AliasChoices("min_relevance", "min_score"),
        description="Graded qrels: rows graded below this are not relevant. For `data.train` these are the "
                    "grades trained on as positives; for a split, the grades its graded nDCG counts.",
    )

    @model_validator(mode="after")
    def _infer_format(self) -> "LabelSource":
        if self.format is None:
            self.format = "qrels" if _suffix(self.path) in (".tsv", ".txt", ".qrels") else "pairs"
        return self


class DataSpec(Section):
    """Corpus, queries, and the training and evaluation labels.

    Relative paths are resolved against `root`, itself relative to the spec file;
    anything with a URI scheme (s3://, gs://, file://) is used as it is.
    """

    root: str = Field(".", description="Base folder for the relative paths below.")
    corpus: CorpusSource
    queries: QuerySource | None = Field(
        None, description="Query texts; required unless every label source is `pairs`/`clicks`."
    )
    train: LabelSource | None = Field(None, description="Labels the mine and train stages learn from.")
    splits: dict[str, LabelSource] = Field(
        default_factory=dict, description="Held-out label sets by name, e.g. `test: {path: qrels/test.tsv}`."
    )
    on_bad_labels: Literal["strict", "skip"] = Field(
        "strict", description="Labels naming unknown queries or documents: fail (`strict`) or drop and count (`skip`)."
    )

    @model_validator(mode="after")
    def _needs_queries(self) -> "DataSpec":
        sources = ([self.train] if self.train else []) + list(self.splits.values())
        if self.queries is None and any(s.format == "qrels" for s in sources):
            raise ValueError("`queries` is required when labels are in `qrels` format")
        return self
