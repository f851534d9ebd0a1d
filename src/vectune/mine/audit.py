"""The mine audit: counts, what each guard dropped, score distributions (with histogram
bins on shared edges, for a later report), what the fallback did and its estimated
false-negative rate, how the row budget was spent, and a check of the output itself."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from vectune.mine.budget import budget_report, spread
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


def _mean(values) -> float | None:
    return round(float(np.mean(values)), 6) if len(values) else None


def fallback_report(spec, choices: dict) -> dict:
    """The `fallback` block: rows whose window came out empty, what the deeper search gave
    them, the bands it used and refused, and the estimated false-negative rate of its
    negatives beside that of the ordinary ones (the same estimator on the same bands)."""
    fb = spec.mine.fallback
    rows = list(choices.items())
    judgements = list({id(c): c for c in choices.values()}.values())
    tried = [c.fallback for c in judgements if c.fallback is not None]
    bands = [b for f in tried for b in f.bands]
    emptied_rows = Counter(c.window_emptied_by for _, c in rows if c.window_emptied_by)
    by_query: dict[str, list] = {}
    for (q, _), c in rows:
        by_query.setdefault(q, []).append(c)
    emptied_queries = Counter(Counter(c.window_emptied_by for c in cs).most_common(1)[0][0]
                              for cs in by_query.values() if all(c.window_emptied_by for c in cs))
    taken = [c for _, c in rows if c.from_fallback]
    fb_estimates = [e for c in taken for e in c.estimates[len(c.ids) - c.from_fallback:] if e is not None]
    ordinary = [e for _, c in rows for e in c.estimates[: len(c.ids) - c.from_fallback] if e is not None]
    used = [b for b in bands if b.status == "used"]
    refused = [b for b in bands if b.status == "refused"]
    dropped = Counter()
    for f in tried:
        dropped.update(f.dropped)
    return {
        "enabled": fb.enabled, "depth": fb.depth, "band": fb.band,
        "max_false_negative_rate": fb.max_false_negative_rate, "label_recall": fb.label_recall,
        "estimator": "labelled positives per other document in the negative's band of ranks, "
                     "x (1 - label_recall) / label_recall",
        "windows_emptied": {"rows": int(sum(emptied_rows.values())), "queries": int(sum(emptied_queries.values())),
                            "queries_with_an_emptied_row": int(sum(any(c.window_emptied_by for c in cs)
                                                                   for cs in by_query.values())),
                            "by_guard": {"rows": dict(emptied_rows.most_common()),
                                         "queries": dict(emptied_queries.most_common())}},
        "rows_with_fallback_negatives": len(taken),
        "queries_with_fallback_negatives": int(sum(any(c.from_fallback for c in cs) for cs in by_query.values())),
        "rows_refused_by_cap": int(sum(c.emptied_by == "fallback_cap" for _, c in rows)),
        "rows_nothing_found": int(sum(c.fallback is not None and not c.ids and not c.fallback.refused
                                      for _, c in rows)),
        "negatives": int(sum(c.from_fallback for c in taken)),
        "rank": describe([r for c in taken for r in c.ranks[len(c.ids) - c.from_fallback:]]),
        "candidates": int(sum(f.considered for f in tried)),
        "dropped": {name: int(dropped.get(name, 0)) for name in GUARDS},
        "bands": {"visited": len(bands), "used": len(used), "refused": len(refused),
                  "empty": int(sum(b.status == "empty" for b in bands)),
                  "refused_survivors": int(sum(b.survivors for b in refused)),
                  "refused_estimate": describe([b.estimate for b in refused])},
        "labelled_positive_density_of_used_bands": (
            round(sum(b.labelled for b in used) / sum(b.candidates for b in used), 6) if used else None),
        "false_negative_rate": {"fallback": _mean(fb_estimates),
                                "fallback_max": round(max(fb_estimates), 6) if fb_estimates else None,
                                "ordinary": _mean(ordinary)},
    }


def output_report(spec, rows: dict) -> dict:
    """The `output` block: rows, queries, positives per query and negatives per row, as
    written to triples.parquet (the train stage then holds out its validation queries)."""
    per_query = Counter(rows["query_id"])
    n_neg = [len(x) for x in rows["negative_ids"]]
    fallback = rows["fallback_negatives"]
    return {
        "rows": len(rows["query_id"]), "queries": len(per_query),
        "positives_per_query": spread(per_query.values()),
        "negatives_per_row": spread(n_neg, exact_up_to=spec.mine.num_negatives),
        "rows_with_hard_negatives": int(sum(n > 0 for n in n_neg)),
        "rows_with_fallback_negatives": int(sum(f > 0 for f in fallback)),
        "negatives": {"window": int(sum(n_neg) - sum(fallback)), "fallback": int(sum(fallback))},
    }


def build_audit(spec, labels, plan, positives: dict, shown: dict, texts: dict, choices: dict, rows: dict,
                cache: dict, clock: dict) -> dict:
    """The audit of one mine (the stage adds run, model and path entries).

    Args:
        plan: the pairs mined (`budget.PairPlan`).
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
                    for q, c in {q: c for (q, _), c in choices.items()}.items()
                    for d in c.duplicates + (c.fallback.duplicates if c.fallback else [])][:20]
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
        "pairs_mined": len(plan.pairs),
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
        "checks": {"negatives_equal_to_positive": int(equal), "negatives_labelled_positive": int(labelled),
                   "fallback_negatives_above_cap": int(sum(
                       e is not None and e > m.fallback.max_false_negative_rate
                       for c in choices.values() for e in c.estimates[len(c.ids) - c.from_fallback:]))},
        "fallback": fallback_report(spec, choices),
        "budget": budget_report(spec, labels, plan),
        "output": output_report(spec, rows),
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
            "fallback": round(t["fallback"] - t["select"], 2),
            "texts_and_write": round(t["write"] - t["fallback"], 2),
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
    "fallback_cap": "the fallback found deeper candidates but among too many labelled positives: raise "
                    "mine.fallback.max_false_negative_rate, or mine.fallback.label_recall where the labels are "
                    "known to be near complete",
}

#: what the fallback adds to the advice on a guard that emptied windows
_DEEPER = {True: "; or let the fallback search deeper (mine.fallback.depth)",
           False: "; or set mine.fallback.enabled: true (negatives from deeper ranks for emptied rows)"}


def preflight(audit: dict) -> dict:
    """What the train stage is about to get from this mine, checked before it starts.

    Returns:
        `share` (of mined queries with at least one hard negative, the fallback's
        included), `low` (below LOW_SHARE), the guard that emptied most queries with its
        figures, the fallback's share and estimated false-negative rate, and a message.
    """
    mined = audit.get("queries_mined", 0)
    share = audit.get("share_of_queries_with_negatives", 1.0 if mined else 0.0)
    emptied = (audit.get("emptied_by") or {}).get("queries") or {}
    guard = max(emptied, key=emptied.get) if emptied else None
    fb = audit.get("fallback") or {}
    rescued = fb.get("queries_with_fallback_negatives", 0)
    rate = (fb.get("false_negative_rate") or {})
    message = f"{audit.get('queries_with_negatives', 0)} of {mined} mined queries ({share:.0%}) have hard negatives"
    if rescued:
        ordinary = rate.get("ordinary")
        message += (f" ({rescued} of them from the fallback, {fb.get('depth')} ranks deeper: estimated "
                    f"false-negative rate {rate.get('fallback') or 0:.3f}"
                    + (f" against {ordinary:.3f} in ordinary windows" if ordinary is not None else "") + ")")
    message += f"; {audit.get('rows_without_negatives', 0)} of {audit.get('triples_out', 0)} rows have none"
    if guard:
        dropped = (audit.get("dropped") or {}).get(guard)
        figures = f"{guard} emptied {emptied[guard]} queries"
        if guard == "fallback_cap":
            figures += (f" (its bands above {fb.get('max_false_negative_rate')} held "
                        f"{(fb.get('bands') or {}).get('refused_survivors', 0):,} candidates)")
        elif dropped is not None and guard in (audit.get("dropped") or {}):
            figures += f" and dropped {dropped:,} of {audit.get('candidates', 0):,} candidates"
        advice = _ADVICE.get(guard, "loosen that guard")
        if guard in GUARDS or guard == "window":
            advice += _DEEPER[bool(fb.get("enabled", False))]
        message += f"; {figures} (reference: {audit.get('reference', 'weakest')}); to mine more, " + advice
    return {"share": share, "low": share < LOW_SHARE, "guard": guard,
            "queries_emptied": emptied.get(guard, 0) if guard else 0,
            "queries_from_fallback": rescued, "fallback_false_negative_rate": rate.get("fallback"),
            "message": message}
