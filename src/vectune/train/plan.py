"""The training plan, decided once on the driver from the mined rows and the spec.

Pure (no Ray, no torch): which queries are held out for validation, which rows train and
with how many hard negatives, how many steps the budget allows, when to checkpoint.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

from vectune.errors import StageError


@dataclass(frozen=True)
class TrainPlan:
    """What the train stage will do.

    Attributes:
        negatives: hard negatives per row asked for (the loss's columns).
        held: query ids held out for validation.
        groups: rows per hard-negative count, largest count first; each group is one
            dataset of the trainer, so a batch never mixes rows of different widths.
        group_of: for every training row (by index in the mined table), its group.
        dropped_short: rows left out: short of negatives under `require_negatives` (or a loss that
            needs them), or in a fewest-negatives group too small to fill one step.
        micro_batch: rows per worker per forward pass.
        steps_per_epoch, total_steps, warmup_steps, checkpoint_every: the schedule.
    """

    negatives: int
    held: frozenset[str]
    groups: dict[int, int]
    group_of: dict[int, int]
    dropped_short: int
    micro_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    checkpoint_every: int

    @property
    def rows(self) -> int:
        return sum(self.groups.values())

    @property
    def rows_without_negatives(self) -> int:
        return self.groups.get(0, 0)


def _groups(counts: Counter, step_rows: int) -> tuple[dict[int, int], dict[int, int]]:
    """Merge hard-negative counts too small to fill a step into the next smaller count.

    Returns (rows per group, the group each count maps to; counts missing from it are left
    out). A group with fewer rows than one optimizer step would never be sampled (batches
    are dropped when incomplete).
    """
    merged: list[tuple[int, int, list[int]]] = []  # (count used, rows, counts folded in)
    for k in sorted(counts, reverse=True):
        if merged and merged[-1][1] < step_rows:  # too small: train it with this count's negatives
            _, rows, sources = merged.pop()
            merged.append((k, rows + counts[k], sources + [k]))
        else:
            merged.append((k, counts[k], [k]))
    if len(merged) > 1 and merged[-1][1] < step_rows:
        # the fewest-negatives group cannot fill a step: leave its rows out rather than
        # strip every other row of its negatives to make room for them
        merged.pop()
    return {k: rows for k, rows, _ in merged}, {src: k for k, _, sources in merged for src in sources}



def plan(query_ids: list[str], negative_counts: list[int], spec, negatives: int, exact_negatives: bool = False,
         only: set[int] | None = None) -> TrainPlan:
    """Decide the training plan.

    Args:
        query_ids, negative_counts: per mined row, its query and how many hard negatives it has.
        negatives: hard negatives per row the loss takes.
        exact_negatives: the loss needs exactly `negatives` (triplet): shorter rows cannot train.
        only: train on these rows alone (a `train.positives_per_query` setting); the held-out
            queries are drawn from every row's query either way.
    """
    t = spec.train
    unique = sorted(set(query_ids))
    n_held = t.held_out(len(unique))
    if n_held >= len(unique):
        raise StageError(f"train.validation_queries ({n_held}) leaves no training queries ({len(unique)} mined)")
    held = frozenset(random.Random(t.seed).sample(unique, n_held)) if n_held else frozenset()
    world_rows = t.workers * t.gradient_accumulation
    micro = t.batch_size // world_rows
    if micro < 2:
        raise StageError(f"train.batch_size ({t.batch_size}) gives fewer than 2 rows per worker and micro-batch "
                         f"({t.workers} workers x {t.gradient_accumulation} accumulation)")
    require = t.require_negatives or exact_negatives
    counts: Counter = Counter()
    index_count: dict[int, int] = {}
    dropped = 0
    for i, (q, n) in enumerate(zip(query_ids, negative_counts)):
        if q in held or (only is not None and i not in only):
            continue
        k = min(n, negatives)
        if require and k < negatives:
            dropped += 1
            continue
        counts[k] += 1
        index_count[i] = k
    step_rows = micro * world_rows
    groups, target = _groups(counts, step_rows)
    left_out = {i for i, k in index_count.items() if k not in target}
    dropped += len(left_out)
    index_count = {i: k for i, k in index_count.items() if i not in left_out}
    # a batch never holds one query twice (the no-duplicates sampler): a group with fewer
    # distinct queries than a micro-batch yields no batch at all
    distinct = {g: len({query_ids[i] for i, k in index_count.items() if target[k] == g}) for g in groups}
    steps_per_epoch = sum(rows // micro for g, rows in groups.items() if distinct[g] >= micro) // world_rows
    if steps_per_epoch < 1:
        why = (f"; {dropped} rows were left out for having fewer than {negatives} hard negatives "
               "(train.require_negatives, or the loss needs them): see the mine audit") if dropped else ""
        raise StageError(f"{sum(groups.values())} usable training rows cannot fill one batch of {t.batch_size}{why}")
    total = max(1, math.ceil(steps_per_epoch * t.epochs))
    if t.max_steps is not None:
        total = min(total, t.max_steps)
    every = t.checkpoint_every or max(1, math.ceil(total / t.checkpoints))
    return TrainPlan(
        negatives=negatives, held=held, groups=dict(sorted(groups.items(), reverse=True)),
        group_of={i: target[k] for i, k in index_count.items()}, dropped_short=dropped, micro_batch=micro,
        steps_per_epoch=steps_per_epoch, total_steps=total, warmup_steps=int(t.warmup_ratio * total),
        checkpoint_every=min(every, total),
    )


def validation_docs(corpus_ids, labelled: set[str], size: int, seed: int) -> tuple[list[str], bool]:
    """The documents the validation queries rank, and whether they are a sample.

    The whole corpus when it holds at most `size` documents, as the gate ranks it; above,
    every labelled document of the validation queries plus a seeded uniform sample of the
    others, `size` in all (or just the labelled ones, when they alone reach `size`). A
    sample drawn from the whole corpus keeps the score's scale close to the gate's; one
    cut from the mined rows did not (their documents are all some query's positive or hard
    negative, and 1,000 of them ranked easier than the corpus: 0.3354 against 0.3159 on
    the same base model in one domain).
    """
    ids = sorted(corpus_ids)
    if len(ids) <= size:
        return ids, False
    labelled = {d for d in labelled}
    others = [d for d in ids if d not in labelled]
    room = max(0, size - len(labelled))
    pick = random.Random(seed).sample(others, min(room, len(others)))
    return sorted(labelled | set(pick)), True


def validation_set(held: set[str], queries: dict[str, str], qrels: dict[str, dict[str, int]],
                   texts: dict[str, str], prompts: tuple[str, str] = ("", "")) -> dict | None:
    """Queries, corpus and graded qrels of the held-out queries (see `validation_docs`).

    Args:
        held: the held-out query ids.
        queries: query texts by id (at least the held ones).
        qrels: training labels (query -> document -> grade): every labelled document of a
            held-out query that is in `texts` counts, not only the mined ones.
        texts: the validation documents' texts by id.
        prompts: (query prefix, document prefix) prepended as the encoders do.
    """
    if not held:
        return None
    qs = {q: prompts[0] + queries[q] for q in sorted(held)}
    corpus = {d: prompts[1] + t for d, t in texts.items()}
    labels = {q: {d: int(g) for d, g in qrels.get(q, {}).items() if d in corpus} for q in qs}
    return {"queries": qs, "corpus": corpus, "qrels": labels}


def rows_per_query(query_ids: list[str], positive_rank: list[int], p: TrainPlan, per_query: int, budget: int,
                   seed: int) -> set[int]:
    """The training rows of a `train.positives_per_query: per_query` setting: each query's rows
    of its first `per_query` positives (mine's round-robin order), whole queries taken, those
    with the most such rows first (ties in a seeded order), until `budget` rows are filled."""
    import hashlib

    by_query: dict[str, list[int]] = {}
    for i in p.group_of:
        if positive_rank[i] < per_query:
            by_query.setdefault(query_ids[i], []).append(i)

    def tie(q: str) -> bytes:
        return hashlib.blake2b(f"{seed}\x1f{q}".encode(), digest_size=8).digest()

    out: set[int] = set()
    for q in sorted(by_query, key=lambda q: (-len(by_query[q]), tie(q))):
        if len(out) >= budget:
            break
        out.update(by_query[q])
    return out
