"""The row budget: which (query, positive) pairs are mined, and how a cap was spent.

`mine.max_queries` draws queries; `mine.max_pairs` (default `auto`: what the training
budget uses) then takes pairs round-robin across them, so each query keeps about the same
number. Every pair also gets its `positive_rank`, its place in its query's round-robin
order, so training can later trade positives per query for queries.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from vectune.data import Labels
from vectune.spec import Spec

#: `mine.max_pairs: auto` mines this much more than the training budget's rows, for the
#: validation queries the train stage holds out and batches the no-duplicates sampler leaves
_AUTO_SLACK = 1.15


def natural(value: str):
    """Sort key: numeric ids in numeric order, before the others."""
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def pair_cap(spec: Spec) -> int | None:
    """`mine.max_pairs` as a number: `auto` is what `train.max_steps` batches can use."""
    cap = spec.mine.max_pairs
    if cap == "auto":
        t = spec.train
        return None if t.max_steps is None else math.ceil(t.max_steps * t.batch_size * _AUTO_SLACK)
    return cap


@dataclass
class PairPlan:
    """The pairs to mine and where each stood in its query's round-robin order.

    Attributes:
        pairs: (query id, positive id), by query then positive (natural order).
        positive_rank: by pair: 0 for the first positive the budget takes of its query.
        queries: the queries left after `max_queries` (all of them are labelled).
        cap: `max_pairs` as a number (None: no cap).
    """

    pairs: list[tuple[str, str]]
    positive_rank: dict[tuple[str, str], int]
    queries: list[str]
    cap: int | None


def plan_pairs(spec: Spec, labels: Labels) -> PairPlan:
    """The (query id, positive id) pairs to mine, after the seeded caps.

    `max_queries` draws queries uniformly; `max_pairs` then takes pairs round-robin across
    the queries (each query's positives shuffled, higher grades first), so every query
    keeps about the same number of pairs: uniform sampling over pairs would hand most of
    the budget to the few queries with hundreds of positives. The round-robin order is
    drawn whether or not the cap cuts, so `positive_rank` means the same either way.
    """
    m = spec.mine
    rng = np.random.default_rng(m.seed)
    qids = sorted(labels.qrels, key=natural)
    if m.max_queries and len(qids) > m.max_queries:
        keep = set(rng.choice(len(qids), size=m.max_queries, replace=False).tolist())
        qids = [q for i, q in enumerate(qids) if i in keep]
    order = [qids[i] for i in rng.permutation(len(qids))]
    queues = {}
    for q in order:
        docs = sorted(labels.qrels[q], key=natural)
        shuffled = [docs[i] for i in rng.permutation(len(docs))]
        queues[q] = sorted(shuffled, key=lambda d: -labels.qrels[q][d])  # stable: grade, then shuffled
    rank = {(q, d): i for q, queue in queues.items() for i, d in enumerate(queue)}
    cap = pair_cap(spec)
    total = len(rank)
    if not cap or total <= cap:
        chosen = set(rank)
    else:
        # the union of what each `train.positives_per_query` setting spends the cap on
        chosen: set[tuple[str, str]] = set()
        for per_query in spec.train.positives_per_query:
            chosen |= _round_robin(order, queues, cap) if per_query is None else _deep(order, queues, cap, per_query)
    pairs = [(q, d) for q in qids for d in sorted(labels.qrels[q], key=natural) if (q, d) in chosen]
    return PairPlan(pairs=pairs, positive_rank={p: rank[p] for p in pairs}, queries=qids, cap=cap)


def _round_robin(order: list[str], queues: dict[str, list[str]], cap: int) -> set[tuple[str, str]]:
    """`cap` pairs taken one per query in turn: as many queries as the cap allows."""
    chosen: set[tuple[str, str]] = set()
    depth = 0
    while len(chosen) < cap:
        for q in order:
            if depth < len(queues[q]):
                chosen.add((q, queues[q][depth]))
                if len(chosen) == cap:
                    break
        depth += 1
    return chosen


def _deep(order: list[str], queues: dict[str, list[str]], cap: int, per_query: int) -> set[tuple[str, str]]:
    """About `cap` pairs taken `per_query` at a time from whole queries, those with the most of
    them first (the train stage's choice for the same setting): fewer queries, more positives."""
    ranked = sorted(order, key=lambda q: -min(len(queues[q]), per_query))  # stable: the drawn order
    chosen: set[tuple[str, str]] = set()
    for q in ranked:
        if len(chosen) >= cap:
            break
        chosen.update((q, d) for d in queues[q][:per_query])
    return chosen


def select_pairs(spec: Spec, labels: Labels) -> list[tuple[str, str]]:
    """The (query id, positive id) pairs to mine (`plan_pairs`' pairs)."""
    return plan_pairs(spec, labels).pairs


def spread(values, exact_up_to: int = 10) -> dict:
    """Mean, min, median, p90 and max of counts, and how many take each value (values
    above `exact_up_to` share one `N+` bucket)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "min": None, "p50": None, "p90": None, "max": None, "counts": {}}
    counts = Counter(int(x) if x <= exact_up_to else exact_up_to + 1 for x in v)
    return {
        "mean": round(float(v.mean()), 3), "min": int(v.min()), "p50": float(np.percentile(v, 50)),
        "p90": float(np.percentile(v, 90)), "max": int(v.max()),
        "counts": {(str(k) if k <= exact_up_to else f"{exact_up_to + 1}+"): n for k, n in sorted(counts.items())},
    }


def budget_report(spec: Spec, labels: Labels, plan: PairPlan) -> dict:
    """How the row budget was spent: the labelled pairs of the drawn queries against the
    pairs taken, queries and positives per query on both sides, rows per positive rank."""
    labelled = {q: len(labels.qrels[q]) for q in plan.queries}
    taken = Counter(q for q, _ in plan.pairs)
    return {
        "max_pairs": spec.mine.max_pairs,
        "cap": plan.cap,
        "max_queries": spec.mine.max_queries,
        "positives_per_query": spec.train.positives_per_query,
        "capped": len(plan.pairs) < sum(labelled.values()),
        "labelled": {"queries": len(labels.qrels), "queries_drawn": len(plan.queries),
                     "pairs": int(sum(labelled.values())), "positives_per_query": spread(labelled.values())},
        "spent": {"queries": len(taken), "pairs": len(plan.pairs),
                  "positives_per_query": spread(taken.values()),
                  "queries_with_every_positive": int(sum(taken[q] == n for q, n in labelled.items())),
                  "queries_without_a_pair": int(sum(q not in taken for q in labelled))},
        "rows_by_positive_rank": spread(plan.positive_rank.values())["counts"],
    }
