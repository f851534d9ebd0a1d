"""Queries and relevance labels: BEIR qrels, JSONL/parquet pairs, click logs."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Container
from dataclasses import dataclass, field

from vectune.data._files import id_value, iter_lines, read_records, text_value
from vectune.data.corpus import CorpusIds
from vectune.errors import DataError
from vectune.spec.data import LabelSource, QuerySource

Qrels = dict[str, dict[str, int]]


@dataclass
class Labels:
    """Relevance labels for a set of queries.

    Attributes:
        qrels: relevant documents (and grades) by query id.
        queries: the text of every query in `qrels`.
        shown: click logs only: documents shown but not clicked, by query id, best position first.
        dropped: labels skipped under `on_bad_labels: skip`, by reason.
        related: graded qrels: documents graded relevant (above 0) but below `min_relevance`,
            by query id: not trained on as positives, never mined as negatives either.
    """

    qrels: Qrels
    queries: dict[str, str]
    shown: dict[str, list[str]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    related: dict[str, set[str]] = field(default_factory=dict)

    def grades(self) -> dict[str, int]:
        """How many (query, document) pairs carry each grade."""
        out: dict[str, int] = {}
        for docs in self.qrels.values():
            for g in docs.values():
                out[str(g)] = out.get(str(g), 0) + 1
        return dict(sorted(out.items(), key=lambda kv: int(kv[0])))

    @property
    def num_pairs(self) -> int:
        return sum(len(d) for d in self.qrels.values())


def query_id_for(text: str) -> str:
    """A stable id for a query given only by its text."""
    return "q" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _field(path: str, number: int, record: dict, name: str, *, text: bool = False) -> str:
    """A required field: an id (string or integer) or, with `text`, a string."""
    value = text_value(path, number, record, name) if text else id_value(path, number, record, name)
    if value is None or not value.strip():
        raise DataError(path, f"missing or empty {name!r}", number)
    return value


def _grade(path: str, number: int, raw: str) -> int | None:
    """A qrels score: an integer grade (`1`, `2.0`); None when it is not a number at all."""
    try:
        value = float(raw)
    except ValueError:
        return None
    if not math.isfinite(value) or value != int(value):
        raise DataError(path, f"score {raw!r} is not an integer grade", number)
    if abs(value) > 1_000_000:
        raise DataError(path, f"score {raw!r} is out of range (grades are small integers)", number)
    return int(value)


def _position(path: str, number: int, record: dict) -> int:
    value = record.get("position", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
        raise DataError(path, f"'position' must be an integer from 0 (the top), not {value!r}", number)
    return value


def load_queries(source: QuerySource, path: str) -> dict[str, str]:
    """Query texts by id. Empty texts and duplicate ids are errors."""
    out: dict[str, str] = {}
    for number, record in read_records(path):
        qid = _field(path, number, record, source.id_field)
        text = text_value(path, number, record, source.text_field)
        if text is None or not text.strip():
            raise DataError(path, f"query {qid!r} has empty text", number)
        if qid in out:
            raise DataError(path, f"duplicate query id {qid!r}", number)
        out[qid] = str(text)
    if not out:
        raise DataError(path, "no queries")
    return out


def read_qrels(path: str, min_score: int = 1, related: dict[str, set[str]] | None = None
               ) -> tuple[Qrels, dict[tuple[str, str], int]]:
    """BEIR/TREC qrels: `qid docid score` or `qid 0 docid score`, tab or space separated.

    Returns the relevant pairs and, for each pair, the line it came from. Pairs graded
    above 0 but below `min_score` go into `related` when it is given.
    """
    qrels: Qrels = {}
    where: dict[tuple[str, str], int] = {}
    for number, line in iter_lines(path):
        parts = line.split("\t") if "\t" in line else line.split()
        parts = [p.strip() for p in parts]
        if len(parts) == 4:  # TREC: qid iteration docid score
            parts = [parts[0], parts[2], parts[3]]
        if len(parts) != 3:
            raise DataError(path, f"expected 3 columns (query-id, corpus-id, score), found {len(parts)}", number)
        score = _grade(path, number, parts[2])
        if score is None:
            if number == 1:  # an optional header line
                continue
            raise DataError(path, f"score {parts[2]!r} is not a number", number)
        if score >= min_score:
            qrels.setdefault(parts[0], {})[parts[1]] = score
            where[(parts[0], parts[1])] = number
        elif score > 0 and related is not None:
            related.setdefault(parts[0], set()).add(parts[1])
    if not qrels:
        raise DataError(path, "no relevant (query, document) pairs")
    return qrels, where


def read_pairs(path: str) -> tuple[Qrels, dict[str, str], dict[tuple[str, str], int]]:
    """JSONL/parquet rows {query, positive[, query_id]}: positive is a corpus id."""
    qrels: Qrels = {}
    queries: dict[str, str] = {}
    where: dict[tuple[str, str], int] = {}
    for number, record in read_records(path):
        text = _field(path, number, record, "query", text=True)
        doc = _field(path, number, record, "positive")
        qid = id_value(path, number, record, "query_id") or query_id_for(text)
        queries[qid] = text
        qrels.setdefault(qid, {})[doc] = 1
        where[(qid, doc)] = number
    if not qrels:
        raise DataError(path, "no (query, positive) pairs")
    return qrels, queries, where


def read_clicks(path: str) -> tuple[Qrels, dict[str, str], dict[str, list[str]], dict[tuple[str, str], int]]:
    """Click-log rows {query, doc_id, clicked, position[, query_id]}.

    Clicked documents are positives; shown-but-unclicked ones become candidate negatives.
    """
    qrels: Qrels = {}
    queries: dict[str, str] = {}
    shown: dict[str, list[tuple[int, str]]] = {}
    where: dict[tuple[str, str], int] = {}
    for number, record in read_records(path):
        text = _field(path, number, record, "query", text=True)
        doc = _field(path, number, record, "doc_id")
        clicked = record.get("clicked")
        if clicked not in (True, False) or not isinstance(clicked, (bool, int)):  # true/false, or 1/0
            raise DataError(path, f"'clicked' must be true or false (or 1/0), not {clicked!r}", number)
        position = _position(path, number, record)
        qid = id_value(path, number, record, "query_id") or query_id_for(text)
        queries[qid] = text
        where[(qid, doc)] = number
        if clicked:
            qrels.setdefault(qid, {})[doc] = 1
        else:
            shown.setdefault(qid, []).append((position, doc))
    if not qrels:
        raise DataError(path, "no clicked rows: a click log needs at least one positive")
    ordered = {
        q: [d for _, d in sorted(v) if d not in qrels.get(q, {})] for q, v in shown.items() if q in qrels
    }
    return qrels, queries, ordered, where


def _known(doc_ids: Container[str], named: set[str]) -> set[str]:
    """Those of `named` that are corpus document ids."""
    names = sorted(named)
    if isinstance(doc_ids, CorpusIds):
        return {d for d, there in zip(names, doc_ids.isin(names)) if there}
    return {d for d in names if d in doc_ids}


def load_labels(
    source: LabelSource,
    path: str,
    doc_ids: Container[str],
    queries: dict[str, str] | None,
    on_bad: str = "strict",
) -> Labels:
    """Read labels and check every query and document they name exists.

    Under `strict`, unknown ids raise DataError with their count and first examples;
    under `skip`, those labels are dropped and counted in `Labels.dropped`.
    """
    shown: dict[str, list[str]] = {}
    related: dict[str, set[str]] = {}
    if source.format == "qrels":
        qrels, where = read_qrels(path, source.min_relevance, related)
        if queries is None:
            raise DataError(path, "qrels need `data.queries` for the query texts")
        texts = queries
    elif source.format == "pairs":
        qrels, texts, where = read_pairs(path)
    else:
        qrels, texts, shown, where = read_clicks(path)

    # every document a label names, looked up in one batch (a `CorpusIds` answers a batch at
    # once; one lookup at a time costs microseconds each, and click logs name millions)
    doc_ids = _known(doc_ids, {d for group in (qrels, shown, related) for docs in group.values() for d in docs})
    unknown_q = [(q, d) for q, docs in qrels.items() for d in docs if q not in texts]
    unknown_d = [(q, d) for q, docs in qrels.items() for d in docs if q in texts and d not in doc_ids]
    dropped: dict[str, int] = {}
    for kind, bad in (("query", unknown_q), ("document", unknown_d)):
        if not bad:
            continue
        if on_bad == "strict":
            first = ", ".join(
                f"line {where[(q, d)]}: {q if kind == 'query' else d!r}" for q, d in bad[:3]
            )
            raise DataError(
                path,
                f"{len(bad)} label(s) point at unknown {kind} ids (first: {first}); "
                "fix the labels or set data.on_bad_labels: skip",
                where[bad[0]],
            )
        dropped[f"unknown_{kind}"] = len(bad)
        for q, d in bad:
            qrels[q].pop(d, None)
    qrels = {q: docs for q, docs in qrels.items() if docs}
    shown = {q: [d for d in docs if d in doc_ids] for q, docs in shown.items() if q in qrels}
    if not qrels:
        raise DataError(path, "no usable labels left after dropping unknown ids")
    related = {q: {d for d in docs if d in doc_ids} - set(qrels[q]) for q, docs in related.items() if q in qrels}
    return Labels(qrels=qrels, queries={q: texts[q] for q in qrels}, shown=shown, dropped=dropped,
                  related={q: docs for q, docs in related.items() if docs})
