"""The mine stage: (query, positive) pairs in, (query, positive, hard negatives) rows out.

Top to bottom: read and cap the training labels; embed the queries (driver, cached) and
the corpus (Ray Data encoder pool, cached); exact top-k search in Ray tasks, and when the
candidates come from the hybrid ranking (`mine.search`), the queries' BM25 top-k in a
scratch Qdrant Edge shard (`vectune.ranking.bm25_rank`); one light
pass over the corpus for the candidates' text hashes (and the positives' texts, and
cross-encoder scores when one is set); choose the negatives on the driver
(`vectune.mine.select`); for the queries with a row whose window came out empty, a deeper
search and one light pass for the new candidates (`vectune.mine.fallback`); one light pass
for the chosen negatives' texts; write `mine/triples.parquet` and `mine/mine_audit.json`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vectune.data import DomainData, Labels
from vectune.embed import (EmbeddingCache, Encoder, encode_texts, encoder_config, model_fingerprint, plan_actors,
                           resolve_model)
from vectune.errors import Problem, SpecError
from vectune.mine.audit import build_audit
from vectune.mine.budget import natural as _natural
from vectune.mine.budget import pair_cap, plan_pairs, select_pairs
from vectune.mine.candidates import ExactScorer, pair_scores, search_corpus
from vectune.mine.fallback import complete_rows
from vectune.mine.lookup import DocFacts, gather
from vectune.mine.select import QueryCandidates, choose_rows
from vectune.precision import resolved
from vectune.ranking import bm25_rank, fuse
from vectune.runs import Run
from vectune.spec import Spec

log = logging.getLogger("vectune.mine")

#: searched beyond each query's depth, so exact rescoring settles near-ties at the cut
_SLACK = 8

TRIPLES = ("mine", "triples.parquet")
AUDIT = ("mine", "mine_audit.json")

#: the contract the train stage reads
SCHEMA = pa.schema([
    ("query_id", pa.string()),
    ("query", pa.string()),
    ("positive_id", pa.string()),
    ("positive", pa.string()),
    ("positive_score", pa.float32()),
    ("grade", pa.int32()),
    ("negative_ids", pa.list_(pa.string())),
    ("negatives", pa.list_(pa.string())),
    ("negative_scores", pa.list_(pa.float32())),
    # added with the fallback (triples written before lack them; the train stage needs none)
    ("positive_rank", pa.int32()),  # the positive's place in its query's round-robin order
    ("fallback_negatives", pa.int32()),  # how many of the negatives (the last ones) the fallback gave
    ("negative_ranks", pa.list_(pa.int32())),  # each negative's rank in the query's search (-1: shown only)
])

__all__ = ["AUDIT", "SCHEMA", "TRIPLES", "candidate_ranking", "mine", "pair_cap", "select_pairs", "stage_inputs",
           "training_labels"]


def candidate_ranking(spec: Spec) -> str:
    """The ranking the candidates come from, `mine.search` resolved: `dense` or `hybrid`."""
    chosen = spec.mine.search
    return spec.search.mode if chosen == "served" else chosen


def training_labels(spec: Spec, data: DomainData) -> Labels:
    """The `data.train` labels, checked against the corpus (raises before Ray starts)."""
    if spec.data.train is None:
        raise SpecError(str(spec.source or "<spec>"), [Problem(
            "data.train", "the mine stage needs training labels (qrels, pairs or clicks); add `data.train: {path: ...}`"
        )])
    return data.labels("train")


def stage_inputs(spec: Spec, data: DomainData) -> dict:
    """What the stage's output depends on: the data, model and mine settings, the data
    files' hashes and the base model's content fingerprint."""
    sections = ("data", "model", "mine") + (("search", "bm25") if candidate_ranking(spec) == "hybrid" else ())
    return {
        "sections": spec.section_digest(*sections),
        "files": data.file_hashes(),
        "model": model_fingerprint(resolve_model(spec.model.base, spec.base_dir)),
    }


def mine(spec: Spec, data: DomainData, run: Run, *, force: bool = False) -> dict:
    """Mine hard negatives for `data.train` into `run` (Ray must be running).

    Runs inside `run.stage("mine", stage_inputs(...))`; a finished stage with the same
    inputs and both files present is not redone (unless `force`).

    Returns:
        The audit (also written to `mine/mine_audit.json`).
    """
    spec = resolved(spec, train=False)  # `auto` precision decided where the encoding runs (vectune.precision)
    inputs = stage_inputs(spec, data)
    triples, audit_path = run.path(*TRIPLES), run.path(*AUDIT)
    if not force and run.is_done("mine", inputs) and triples.exists() and audit_path.exists():
        log.info("mine: already done in run %s with the same inputs", run.id)
        return json.loads(audit_path.read_text())
    with run.stage("mine", inputs) as outputs:
        audit = _mine(spec, data, run)
        outputs.update(triples=str(triples), audit=str(audit_path), rows=audit["triples_out"],
                       negatives=audit["negatives_out"], queries_short=audit["queries_short"])
    return audit


def _cache_sizes(*configs) -> dict[str, int]:
    return {c.cache_dir: len(EmbeddingCache(c.cache_dir)) for c in configs if c.cache_dir}


def _mine(spec: Spec, data: DomainData, run: Run) -> dict:
    m = spec.mine
    clock = {"start": time.perf_counter()}

    def lap(name: str) -> None:
        clock[name] = time.perf_counter()

    labels = training_labels(spec, data)
    plan = plan_pairs(spec, labels)
    pairs = plan.pairs
    qids = list(dict.fromkeys(q for q, _ in pairs))
    qindex = {q: i for i, q in enumerate(qids)}
    # every labelled positive guards, and so do documents graded below `min_relevance`
    positives = {q: sorted(set(labels.qrels[q]) | labels.related.get(q, set()), key=_natural) for q in qids}
    rows_of: dict[str, list[str]] = {}
    for q, p in pairs:
        rows_of.setdefault(q, []).append(p)
    shown = {q: labels.shown.get(q, []) for q in qids}
    model_path = resolve_model(spec.model.base, spec.base_dir)
    q_cfg = encoder_config(spec, model_path, role="query")
    d_cfg = encoder_config(spec, model_path, role="document")
    cache_before = _cache_sizes(q_cfg, d_cfg)
    log.info("mine: %d queries, %d pairs", len(qids), len(pairs))

    # 1. embed queries (driver, cached), search the corpus (Ray Data; see candidates.py)
    q_encoder = Encoder(q_cfg)
    queries = encode_texts([labels.queries[q] for q in qids], q_cfg, encoder=q_encoder)
    lap("queries")
    depth = {q: m.range_max + len(positives[q]) for q in qids}
    hybrid = candidate_ranking(spec) == "hybrid"
    # a hybrid ranking fuses each side's top `prefetch`, as the served query does
    k = max(max(depth.values()), spec.search.prefetch if hybrid else 0) + _SLACK
    # without an embedding cache a second search would encode the corpus again: search as
    # deep as the fallback may need at once (with a cache, only its queries search again)
    ahead = m.fallback.enabled and not d_cfg.cache_dir
    top, d_cfg, embedded_by = search_corpus(spec, data, model_path, queries,
                                            k + m.fallback.depth if ahead else k)
    lexical = bm25_rank(data.text_batches(), {q: labels.queries[q] for q in qids}, spec.bm25,
                        spec.search.prefetch) if hybrid else {}
    lap("search")

    # 2. one light pass: text hashes of every candidate, texts of positives and shown documents
    pool = {q: _ranked(top, qindex[q], k) for q in qids}
    extra = {d for q in qids for d in positives[q] + shown[q]}
    wanted = {d for ids, _ in pool.values() for d in ids} | {d for hits in lexical.values() for d in hits} | extra
    blocks = max(2, math.ceil(data.corpus.count / m.batch_size))
    cross = _cross_plan(spec, [labels.queries[q] for q in qids], {
        qindex[q]: pool[q][0] + list(lexical.get(q, ())) + positives[q] + shown[q] for q in qids}
    ) if m.cross_encoder else None
    if lexical and not d_cfg.cache_dir:  # no cached vectors: BM25's candidates are encoded with the positives
        extra |= {d for hits in lexical.values() for d in hits}
    facts = gather(data, wanted, extra, prefix=d_cfg.prefix, blocks=blocks, cross=cross)
    lap("candidates")

    # 3. exact scores, the candidates of each query cut to its depth, then the choice
    score = _Scores(facts, queries, qindex, d_cfg, extra, cross is not None)
    choices, positive_scores, cands = {}, {}, {}
    for q in qids:
        ids, scores = (score.fused(q, *pool[q], lexical[q], depth[q], spec.search) if hybrid
                       else score.ranking(q, *pool[q], depth[q]))
        pos = score(q, positives[q])
        positive_scores.update({(q, p): float(v) for p, v in zip(positives[q], pos)})
        cands[q] = qc = QueryCandidates(
            query_id=q, positive_ids=positives[q], positive_keys=[facts.keys[p] for p in positives[q]],
            positive_scores=pos, ids=ids, scores=scores, keys=[facts.keys[d] for d in ids],
            shown_ids=shown[q], shown_scores=score(q, shown[q]), shown_keys=[facts.keys[d] for d in shown[q]],
        )
        for p, choice in choose_rows(m, qc, rows_of[q]).items():
            choices[(q, p)] = choice
    lap("select")

    # 4. the fallback: a deeper ranking for the queries with a row whose window is empty
    needy = [q for q in qids if any(not choices[(q, p)].ids for p in rows_of[q])] if m.fallback.enabled else []
    if needy:
        log.info("mine: %d queries have rows without negatives: searching %d ranks deeper", len(needy),
                 m.fallback.depth)
        deep = top if ahead else search_corpus(spec, data, model_path, queries[[qindex[q] for q in needy]],
                                               k + m.fallback.depth)[0]
        row_of = {q: qindex[q] for q in needy} if ahead else {q: i for i, q in enumerate(needy)}
        deep_pool = {q: _ranked(deep, row_of[q], k + m.fallback.depth) for q in needy}
        if m.cross_encoder:  # the cross-encoder scores each new (query, candidate) pair
            todo = {qindex[q]: [d for d in deep_pool[q][0] if (qindex[q], d) not in facts.cross] for q in needy}
            more = _cross_plan(spec, cross["queries"], todo)
            new = set(more["pairs"])
        else:
            more, new = None, {d for ids, _ in deep_pool.values() for d in ids} - set(facts.keys)
        if new:
            found = gather(data, new, set(), prefix=d_cfg.prefix, blocks=blocks, cross=more)
            facts.keys.update(found.keys)
            facts.vkeys.update(found.vkeys)
            facts.cross.update(found.cross)
        for q in needy:
            qc = cands[q]
            qc.deep_ids, qc.deep_scores = score.ranking(q, *deep_pool[q], depth[q] + m.fallback.depth)
            qc.deep_keys, qc.deep_start = [facts.keys[d] for d in qc.deep_ids], depth[q]
    for q in qids:
        choices.update({(q, p): c for p, c in complete_rows(m, cands[q], {p: choices[(q, p)] for p in rows_of[q]}
                                                             ).items()})
    lap("fallback")

    # 5. texts of the chosen negatives only, then the rows
    need = {d for c in choices.values() for d in c.ids} - set(facts.texts)
    if need:
        facts.texts.update(gather(data, need, need, prefix=d_cfg.prefix, blocks=blocks).texts)
    rows = _rows(plan, labels, facts, choices, positive_scores)
    _write_parquet(rows, run.path(*TRIPLES))
    lap("write")

    cache = {"before": cache_before, "after": _cache_sizes(q_cfg, d_cfg), "queries_encoded": q_encoder.encoded,
             "shared": q_cfg.cache_dir == d_cfg.cache_dir, "documents": d_cfg.cache_dir}
    audit = {
        "run_id": run.id, "triples": str(run.path(*TRIPLES)),
        "model": {"path": model_path, "fingerprint": d_cfg.fingerprint, "cross_encoder": m.cross_encoder},
        "corpus_vectors": embedded_by, "exact_scores": score.exact.enabled,
        "ranking": {"source": candidate_ranking(spec), **({
            "fusion": spec.search.fusion, "prefetch": spec.search.prefetch,
            "from_bm25_only": score.bm25_only} if hybrid else {})},
        **build_audit(spec, labels, plan, positives, shown, facts.texts, choices, rows, cache, clock),
    }
    run.write_json("/".join(AUDIT), audit)
    return audit


def _ranked(top, row: int, k: int) -> tuple[list[str], np.ndarray]:
    """Row `row` of a search's ranking, its first `k` real hits: ids and search scores."""
    row_ids, row_scores = top.ids[row][:k], top.scores[row][:k]
    ok = [i for i, d in enumerate(row_ids) if d != "" and np.isfinite(row_scores[i])]
    return [str(row_ids[i]) for i in ok], np.asarray(row_scores, dtype=np.float32)[ok]


def _cross_plan(spec, query_texts: list[str], candidates: dict[int, list[str]]) -> dict:
    """Which (document, query index) pairs the cross-encoder scores during a corpus pass."""
    path = spec.resolve(spec.mine.cross_encoder, data=False)
    pairs: dict[str, list[int]] = {}
    for i, docs in candidates.items():
        for d in dict.fromkeys(docs):
            pairs.setdefault(d, []).append(i)
    return {"model": path, "pairs": pairs, "queries": query_texts,
            "batch_size": spec.model.batch_size, "actors": plan_actors(spec.mine.concurrency, spec.mine.num_gpus)}


class _Scores:
    """Scores of (query, documents): the cross-encoder's when one is set, else the base
    model's, computed exactly from the cached vectors (see candidates.py); without a
    cache, search scores for candidates and driver-side vectors for positives."""

    def __init__(self, facts: DocFacts, queries: np.ndarray, qindex: dict, d_cfg, extra: set[str], cross: bool):
        self.facts, self.queries, self.qindex, self.cross = facts, queries, qindex, cross
        self.exact = ExactScorer(d_cfg, queries)
        self.d_cfg, self.extra = d_cfg, sorted(extra)
        self._vectors = None
        self.bm25_only = 0  # hybrid candidates that only BM25 brought (within each query's depth)

    def ranking(self, q: str, ids: list[str], search_scores: np.ndarray, depth: int) -> tuple[list[str], np.ndarray]:
        """Candidates re-ranked by their exact bi-encoder scores and cut to `depth`, with
        the scores the guards use (the cross-encoder's when one is set)."""
        bi = self.bi_encoder(q, ids, search_scores)
        order = _best_first(ids, bi)[:depth]
        ranked = [ids[i] for i in order]
        return ranked, self(q, ranked, bi[order])

    def fused(self, q: str, ids: list[str], search_scores: np.ndarray, lexical: dict[str, float], depth: int,
              search) -> tuple[list[str], np.ndarray]:
        """Candidates in the hybrid order: the dense side's top `search.prefetch` by exact
        bi-encoder score (`_best_first`, as `ranking`) fused with the BM25 side's (`lexical`, best
        first) as `search` fuses them, cut to `depth`, with the scores the guards use."""
        bi = self.bi_encoder(q, ids, search_scores)
        dense = [(ids[i], float(bi[i])) for i in _best_first(ids, bi)[:search.prefetch]]
        ranked = [d for d, _ in fuse([dense, list(lexical.items())], search.fusion, limit=depth, rrf_k=search.rrf_k)]
        known = dict(zip(ids, bi.tolist()))
        missing = [d for d in ranked if d not in known]  # BM25 brought them: scored like the rest
        self.bm25_only += len(missing)
        if missing:
            known.update(zip(missing, self.bi_encoder(q, missing).tolist()))
        return ranked, self(q, ranked, np.asarray([known[d] for d in ranked], dtype=np.float32))

    def bi_encoder(self, q: str, ids: list[str], fallback: np.ndarray | None = None) -> np.ndarray:
        qi = self.qindex[q]
        if self.exact.enabled:
            exact = self.exact.scores(qi, [self.facts.vkeys[d] for d in ids])
            if exact is not None:
                return exact
        if fallback is not None:
            return fallback
        if self._vectors is None:  # positives and shown documents, encoded here (no cache)
            vectors = encode_texts([self.facts.texts[d] for d in self.extra], self.d_cfg)
            self._vectors = dict(zip(self.extra, vectors))
        return pair_scores(self.queries[qi], np.stack([self._vectors[d] for d in ids]))

    def __call__(self, q: str, ids: list[str], bi: np.ndarray | None = None) -> np.ndarray:
        if not ids:
            return np.zeros(0, dtype=np.float32)
        if self.cross:
            return np.asarray([self.facts.cross[(self.qindex[q], d)] for d in ids], dtype=np.float32)
        return bi if bi is not None else self.bi_encoder(q, ids)


def _best_first(ids: list[str], scores: np.ndarray) -> list[int]:
    """Positions of `ids` by score, best first; ties (the same text scores the same) broken by
    id, so a cut never depends on the order the search returned them in."""
    return sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))


def _rows(plan, labels, facts, choices, positive_scores) -> dict[str, list]:
    cols: dict[str, list] = {name: [] for name in SCHEMA.names}
    for q, p in plan.pairs:
        c = choices[(q, p)]
        cols["query_id"].append(q)
        cols["query"].append(labels.queries[q])
        cols["positive_id"].append(p)
        cols["positive"].append(facts.texts[p])
        cols["positive_score"].append(positive_scores[(q, p)])
        cols["grade"].append(int(labels.qrels[q][p]))
        cols["negative_ids"].append(list(c.ids))
        cols["negatives"].append([facts.texts[d] for d in c.ids])
        cols["negative_scores"].append(list(c.scores))
        cols["positive_rank"].append(plan.positive_rank[(q, p)])
        cols["fallback_negatives"].append(c.from_fallback)
        cols["negative_ranks"].append(list(c.ranks))
    return cols


def _write_parquet(cols: dict[str, list], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(pa.table(cols, schema=SCHEMA), tmp)
    os.replace(tmp, path)
