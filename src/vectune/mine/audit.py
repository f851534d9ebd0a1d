"""The mine audit: counts, what each guard dropped, score distributions (with histogram
bins on shared edges, for a later report), and a check of the output itself."""

from __future__ import annotations

import time
from collections import Counter

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
        choices: `select.Choice` per (query id, positive id) row; rows: the output columns.
        cache: embedding-cache sizes by folder before and after, and queries encoded.
        clock: perf_counter stamps of the phases.
    """
    m = spec.mine
    # one judgement per row (`reference: pair`), or one per query shared by its rows (`weakest`)
    judgements = list({id(c): c for c in choices.values()}.values())
    dropped = {name: 0 for name in (*GUARDS, "range_min", "beyond_range_max")}
    for c in judgements:
        for name, n in c.dropped.items():
            dropped[name] += n
    dup_examples = [{"query_id": q, "doc_id": d}
                    for q, c in {q: c for (q, _), c in choices.items()}.items() for d in c.duplicates][:20]
    n_neg = [len(x) for x in rows["negative_ids"]]
    pos_scores = rows["positive_score"]
    neg_scores = [s for ss in rows["negative_scores"] for s in ss]
    diff = [p - s for p, ss in zip(pos_scores, rows["negative_scores"]) for s in ss]
    by_query: dict[str, list] = {}
    for (q, _), c in choices.items():
        by_query.setdefault(q, []).append(c)
    with_negatives = sum(any(c.ids for c in cs) for cs in by_query.values())
    rows_emptied = Counter(c.emptied_by for c in choices.values() if c.emptied_by)
    queries_emptied = Counter(Counter(c.emptied_by for c in cs).most_common(1)[0][0]
                              for cs in by_query.values() if not any(c.ids for c in cs))
    # checked on the output itself: no negative is, or reads like, a positive of its query
    pos_text = {q: {normalise(texts[p]) for p in positives[q] if p in texts} for q in by_query}
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
        "reference": m.reference,
        "judged_per": "query" if m.reference == "weakest" else "pair",
        "score_source": "cross-encoder" if m.cross_encoder else "bi-encoder",
        "queries_in": len(labels.qrels),
        "pairs_in": labels.num_pairs,
        "labels_dropped": dict(labels.dropped),
        "queries_mined": len(by_query),
        "pairs_mined": len(pairs),
        "triples_out": len(rows["query_id"]),
        "negatives_out": int(sum(n_neg)),
        "queries_short": int(sum(min(len(c.ids) for c in cs) < m.num_negatives for cs in by_query.values())),
        "rows_short": int(sum(n < m.num_negatives for n in n_neg)),
        "rows_without_negatives": int(sum(n == 0 for n in n_neg)),
        "queries_with_negatives": int(with_negatives),
        "queries_without_negatives": int(len(by_query) - with_negatives),
        "share_of_queries_with_negatives": round(with_negatives / max(1, len(by_query)), 4),
        "candidates": int(sum(c.considered for c in judgements)),
        "dropped": dropped,
        "emptied_by": {"queries": dict(queries_emptied.most_common()), "rows": dict(rows_emptied.most_common())},
        "grades": {"labels": labels.grades(), "mined": {str(g): n for g, n in sorted(Counter(rows["grade"]).items())},
                   "related_below_min_relevance": int(sum(len(v) for v in labels.related.values()))},
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


#: below this share of mined queries with hard negatives, the pre-flight check speaks up
LOW_SHARE = 0.5

_ADVICE = {
    "margin": "lower mine.margin",
    "relative_margin": "lower mine.relative_margin (or set it to null)",
    "max_score": "raise mine.max_score (or set it to null)",
    "labelled_positive": "widen the window (mine.range_max): the query's labelled positives fill it",
    "duplicate_of_positive": "de-duplicate the corpus: copies of positives fill the window",
    "duplicate_of_negative": "de-duplicate the corpus",
    "window": "lower mine.range_min",
    "no_candidates": "check the corpus: the search found no candidates",
}


def preflight(audit: dict) -> dict:
    """What the train stage is about to get from this mine, checked before it starts.

    Returns:
        `share` (of mined queries with at least one hard negative), `low` (below
        LOW_SHARE), the guard that emptied most queries with its figures, and a message.
    """
    mined = audit.get("queries_mined", 0)
    share = audit.get("share_of_queries_with_negatives", 1.0 if mined else 0.0)
    emptied = (audit.get("emptied_by") or {}).get("queries") or {}
    guard = max(emptied, key=emptied.get) if emptied else None
    message = (f"{audit.get('queries_with_negatives', 0)} of {mined} mined queries ({share:.0%}) have hard "
               f"negatives; {audit.get('rows_without_negatives', 0)} of {audit.get('triples_out', 0)} rows have none")
    if guard:
        dropped = (audit.get("dropped") or {}).get(guard)
        figures = f"{guard} emptied {emptied[guard]} queries"
        if dropped is not None and guard in (audit.get("dropped") or {}):
            figures += f" and dropped {dropped:,} of {audit.get('candidates', 0):,} candidates"
        message += f"; {figures} (reference: {audit.get('reference', 'weakest')}); to mine more, " + \
            _ADVICE.get(guard, "loosen that guard")
    return {"share": share, "low": share < LOW_SHARE, "guard": guard,
            "queries_emptied": emptied.get(guard, 0) if guard else 0, "message": message}
