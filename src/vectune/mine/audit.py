"""The mine audit: counts, what each guard dropped, score distributions (with histogram
bins on shared edges, for a later report), and a check of the output itself."""

from __future__ import annotations

import time

import numpy as np

from vectune.mine.select import GUARDS, normalise

PERCENTILES = (5, 25, 50, 75, 95)


def describe(values) -> dict:
    """Count, mean, std, min, percentiles and max of a list of scores (None where empty)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"count": 0, "mean": None, "std": None, "min": None,
                **{f"p{p}": None for p in PERCENTILES}, "max": None}
    pct = np.percentile(v, PERCENTILES)
    return {
        "count": int(v.size), "mean": round(float(v.mean()), 6), "std": round(float(v.std()), 6),
        "min": round(float(v.min()), 6), **{f"p{p}": round(float(x), 6) for p, x in zip(PERCENTILES, pct)},
        "max": round(float(v.max()), 6),
    }


def histogram(series: dict[str, list[float]], bins: int = 30) -> dict:
    """Histograms of several score lists over the same edges, for plotting side by side."""
    values = [np.asarray(v, dtype=np.float64) for v in series.values() if len(v)]
    if not values:
        return {"edges": [], **{name: [] for name in series}}
    joined = np.concatenate(values)
    lo, hi = float(joined.min()), float(joined.max())
    if hi <= lo:
        hi = lo + 1e-6
    edges = np.linspace(lo, hi, bins + 1)
    out = {"edges": [round(float(e), 6) for e in edges]}
    for name, v in series.items():
        counts, _ = np.histogram(np.asarray(v, dtype=np.float64), bins=edges)
        out[name] = counts.astype(int).tolist()
    return out


def score_report(positive: list[float], negative: list[float], difference: list[float]) -> dict:
    """The `scores` block of the audit: positives, negatives, their gap, and histograms."""
    return {
        "positive": describe(positive),
        "negative": describe(negative),
        "difference": describe(difference),
        "histogram": histogram({"positive": positive, "negative": negative}),
    }


def build_audit(spec, labels, pairs, positives: dict, shown: dict, texts: dict, choices: dict, rows: dict,
                cache: dict, clock: dict) -> dict:
    """The audit of one mine (the stage adds run, model and path entries).

    Args:
        positives: every labelled positive per mined query; shown: click-log shown documents.
        texts: document texts the stage fetched (positives and chosen negatives at least).
        choices: `select.Choice` per query; rows: the output columns.
        cache: embedding-cache sizes by folder before and after, and queries encoded.
        clock: perf_counter stamps of the phases.
    """
    m = spec.mine
    dropped = {name: 0 for name in (*GUARDS, "range_min", "beyond_range_max")}
    for c in choices.values():
        for name, n in c.dropped.items():
            dropped[name] += n
    dup_examples = [{"query_id": q, "doc_id": d} for q, c in choices.items() for d in c.duplicates][:20]
    n_neg = [len(x) for x in rows["negative_ids"]]
    pos_scores = rows["positive_score"]
    neg_scores = [s for ss in rows["negative_scores"] for s in ss]
    diff = [p - s for p, ss in zip(pos_scores, rows["negative_scores"]) for s in ss]
    # checked on the output itself: no negative is, or reads like, a positive of its query
    pos_text = {q: {normalise(texts[p]) for p in positives[q] if p in texts} for q in choices}
    equal = sum(normalise(t) in pos_text[q] for q, ts in zip(rows["query_id"], rows["negatives"]) for t in ts)
    labelled = sum(d in positives[q] for q, ds in zip(rows["query_id"], rows["negative_ids"]) for d in ds)
    before, after, folder = cache["before"], cache["after"], cache["documents"]
    new_docs = None
    if folder:
        # queries share the documents' folder when both prefixes are equal
        new_docs = after.get(folder, 0) - before.get(folder, 0) - (cache["queries_encoded"] if cache["shared"] else 0)
    t = clock
    return {
        "settings": m.model_dump(mode="json"),
        "score_source": "cross-encoder" if m.cross_encoder else "bi-encoder",
        "queries_in": len(labels.qrels),
        "pairs_in": labels.num_pairs,
        "labels_dropped": dict(labels.dropped),
        "queries_mined": len(choices),
        "pairs_mined": len(pairs),
        "triples_out": len(rows["query_id"]),
        "negatives_out": int(sum(n_neg)),
        "queries_short": int(sum(len(c.ids) < m.num_negatives for c in choices.values())),
        "rows_short": int(sum(n < m.num_negatives for n in n_neg)),
        "queries_without_negatives": int(sum(not c.ids for c in choices.values())),
        "candidates": int(sum(c.considered for c in choices.values())),
        "dropped": dropped,
        "duplicates_of_positives": {"dropped": dropped["duplicate_of_positive"], "examples": dup_examples},
        "shown": {"candidates": int(sum(len(s) for s in shown.values())),
                  "negatives": int(sum(c.from_shown for c in choices.values()))},
        "checks": {"negatives_equal_to_positive": int(equal), "negatives_labelled_positive": int(labelled)},
        "scores": score_report(pos_scores, neg_scores, diff),
        "embedding_cache": {
            "enabled": bool(folder),
            "before": int(sum(before.values())),
            "after": int(sum(after.values())),
            "queries_encoded": int(cache["queries_encoded"]),
            "documents_encoded": None if new_docs is None else int(new_docs),
        },
        "seconds": {
            "queries": round(t["queries"] - t["start"], 2),
            "embed_and_search": round(t["search"] - t["queries"], 2),
            "candidates": round(t["candidates"] - t["search"], 2),
            "select": round(t["select"] - t["candidates"], 2),
            "texts_and_write": round(t["write"] - t["select"], 2),
            "total": round(time.perf_counter() - t["start"], 2),
        },
    }
