"""IR metrics through pytrec_eval (trec_eval's own code), never hand-written."""

from __future__ import annotations

import numpy as np
import pytrec_eval

# metric name -> trec_eval measure; `mrr@k` truncates the run to k first (as BEIR does)
_MEASURES = {"ndcg": "ndcg_cut", "recall": "recall", "map": "map_cut", "precision": "P"}


def _split(name: str) -> tuple[str, int]:
    kind, k = name.split("@")
    return kind, int(k)


def score_run(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]],
              metrics: list[str]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean and per-query metrics, averaged over every labelled query.

    Args:
        qrels: relevant documents (grades) by query.
        run: retrieved documents with scores by query.
        metrics: names such as ndcg@10, recall@100, mrr@10, map@100, precision@10.
    """
    per_query: dict[str, dict[str, float]] = {q: {} for q in qrels}
    plain = [m for m in metrics if _split(m)[0] != "mrr"]
    if plain:
        measures = {f"{_MEASURES[k]}.{c}" for k, c in map(_split, plain)}
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, measures)
        full = {q: run.get(q, {}) for q in qrels}
        res = evaluator.evaluate(full)
        for name in plain:
            kind, c = _split(name)
            key = f"{_MEASURES[kind]}_{c}"
            for q in qrels:
                per_query[q][name] = float(res.get(q, {}).get(key, 0.0))
    for name in metrics:
        kind, c = _split(name)
        if kind != "mrr":
            continue
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
        truncated = {q: dict(sorted(run.get(q, {}).items(), key=lambda x: (-x[1], x[0]))[:c]) for q in qrels}
        res = evaluator.evaluate(truncated)
        for q in qrels:
            per_query[q][name] = float(res.get(q, {}).get("recip_rank", 0.0))
    means = {m: float(np.mean([per_query[q][m] for q in qrels])) for m in metrics}
    return means, per_query
