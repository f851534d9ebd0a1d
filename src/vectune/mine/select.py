"""Choosing a query's negatives from its ranked candidates: guards, window, sampling.

Pure and driver-side: the Ray passes gather the candidates (ids, scores, text hashes),
this module decides (and `fallback` decides for rows whose window came out empty). The
semantics are those of the `mine` spec section's docstring.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from vectune.spec.mine import MineSpec

#: guard names, in the order they are applied (the audit reports drops under these names);
#: `duplicate_of_negative` keeps one of several candidates with the same normalised text
#: (sentence-transformers de-duplicates its corpus by text, so it never emits both either)
GUARDS = ("labelled_positive", "duplicate_of_positive", "margin", "relative_margin", "max_score",
          "duplicate_of_negative")


def normalise(text: str) -> str:
    """Text as the duplicate guard compares it: lower-case, whitespace collapsed."""
    return " ".join(text.lower().split())


def text_key(text: str) -> int:
    """64-bit hash of the normalised text (equal texts, equal keys)."""
    return int.from_bytes(hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=8).digest(), "little")


@dataclass
class QueryCandidates:
    """Everything the choice for one query depends on.

    Attributes:
        query_id: the query.
        positive_ids: every labelled positive of the query (never a negative).
        positive_keys: `text_key` of each positive's text.
        positive_scores: score of each positive (`weakest` guards compare with the lowest).
        ids, scores, keys: ranked candidates (best first), at most range_max + P of them.
        shown_ids, shown_scores, shown_keys: click logs: shown-but-unclicked documents.
        deep_ids, deep_scores, deep_keys: the fallback's deeper ranking (from rank 0, best
            first), set only for queries with a row whose window came out empty.
        deep_start: the first rank of that ranking the fallback may take (beyond `ids`).
    """

    query_id: str
    positive_ids: list[str]
    positive_keys: list[int]
    positive_scores: np.ndarray
    ids: list[str]
    scores: np.ndarray
    keys: list[int]
    shown_ids: list[str] = field(default_factory=list)
    shown_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    shown_keys: list[int] = field(default_factory=list)
    deep_ids: list[str] = field(default_factory=list)
    deep_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    deep_keys: list[int] = field(default_factory=list)
    deep_start: int = 0


@dataclass
class Band:
    """Ranks `start` to `end - 1` of a query's ranking, as the fallback judged them.

    Attributes:
        candidates: ranked documents in the band (positives included).
        labelled: the query's labelled positives among them, and documents with a positive's text.
        estimate: `fallback.estimate(labelled, candidates, label_recall)`.
        survivors: fallback candidates in the band that passed the guards.
        status: `used` (its survivors joined the window), `refused` (estimate above the
            cap) or `empty` (no survivors).
    """

    start: int
    end: int
    candidates: int
    labelled: int
    estimate: float
    survivors: int = 0
    status: str = "empty"


@dataclass
class Fallback:
    """What the fallback did for one row (or one query, under `reference: weakest`)."""

    bands: list[Band]
    dropped: Counter
    considered: int  # deep candidates judged (beyond the window's, not judged there already)
    taken: int = 0
    duplicates: list[str] = field(default_factory=list)

    @property
    def refused(self) -> int:
        """Survivors left in bands refused by the cap."""
        return sum(b.survivors for b in self.bands if b.status == "refused")


@dataclass
class Choice:
    """The negatives chosen for one training row (or one query, under `reference: weakest`),
    and what the guards dropped on the way.

    Attributes:
        ranks: each negative's rank in the query's search ranking (-1: a shown document
            the search did not return).
        estimates: each negative's estimated false-negative rate (`fallback.Bands`), once
            `fallback.complete_rows` has run; None where it has no rank.
        from_fallback: how many of the negatives came from the fallback (the last ones).
        fallback: what the fallback did, when the window was empty and it searched deeper.
        survivor_keys: text keys of the window's survivors (the fallback never repeats one).
    """

    ids: list[str]
    scores: list[float]
    dropped: Counter
    from_shown: int = 0
    considered: int = 0  # candidates looked at: ranked plus shown
    duplicates: list[str] = field(default_factory=list)  # candidates whose text equals a positive's
    ranks: list[int] = field(default_factory=list)
    estimates: list[float | None] = field(default_factory=list)
    from_fallback: int = 0
    fallback: Fallback | None = None
    survivor_keys: set[int] = field(default_factory=set, repr=False)

    @property
    def window_emptied_by(self) -> str | None:
        """None when the window gave negatives; else the guard that dropped most of the
        candidates (`window` when survivors were all skipped by range_min, `no_candidates`
        when there were none)."""
        if len(self.ids) > self.from_fallback:
            return None
        guards = {g: self.dropped.get(g, 0) for g in GUARDS}
        if any(guards.values()):
            return max(GUARDS, key=lambda g: (guards[g], -GUARDS.index(g)))
        return "window" if self.dropped.get("range_min", 0) else "no_candidates"

    @property
    def emptied_by(self) -> str | None:
        """None when the row has negatives; `fallback_cap` when the fallback found some
        but every band holding them was above `fallback.max_false_negative_rate`; else
        what emptied the window."""
        if self.ids:
            return None
        if self.fallback is not None and self.fallback.refused:
            return "fallback_cap"
        return self.window_emptied_by


def _guard(spec: MineSpec, c: QueryCandidates, reference: np.float32, doc_id: str, score: np.float32,
           key: int) -> str | None:
    """The first guard that drops this candidate, or None if it survives.

    Comparisons are float32, written as sentence-transformers writes them, so a
    candidate on a threshold is kept or dropped exactly as there.
    """
    if doc_id in c.positive_ids:  # a short list: the query's own positives
        return "labelled_positive"
    if key in c.positive_keys:
        return "duplicate_of_positive"
    if spec.margin is not None and score + np.float32(spec.margin) > reference:
        return "margin"
    if spec.relative_margin is not None and score > reference - abs(reference) * np.float32(spec.relative_margin):
        return "relative_margin"
    if spec.max_score is not None and score > np.float32(spec.max_score):
        return "max_score"
    return None


def query_rng(seed: int, query_id: str) -> np.random.Generator:
    """A generator for one query: the same choice whatever else is mined alongside."""
    return np.random.default_rng([seed, zlib.crc32(query_id.encode("utf-8"))])


def survivors(spec: MineSpec, c: QueryCandidates, reference: np.float32, ids, scores, keys, ranks,
              seen: set[int], dropped: Counter, duplicates: list[str]) -> list[tuple[str, np.float32, int]]:
    """(id, score, rank) of the candidates that pass the guards, in the order given; `seen`
    (text keys of earlier survivors) grows, so of several equal texts only the first passes."""
    kept = []
    for doc_id, score, key, rank in zip(ids, scores, keys, ranks):
        reason = _guard(spec, c, reference, doc_id, np.float32(score), key)
        if reason is None and key in seen:
            reason = "duplicate_of_negative"
        if reason is None:
            seen.add(key)
            kept.append((doc_id, np.float32(score), rank))
        else:
            dropped[reason] += 1
            if reason == "duplicate_of_positive":
                duplicates.append(doc_id)
    return kept


def pick(spec: MineSpec, window: list, room: int, rng: np.random.Generator) -> list:
    """`room` of the window's entries (best first): its best (`top`) or a uniform sample."""
    if spec.sampling == "top" or len(window) <= room:
        return window[:room]
    idx = np.sort(rng.choice(len(window), size=room, replace=False))
    return [window[i] for i in idx]  # window is best first, so sorted indices keep that order


def reference_score(c: QueryCandidates, positive: str | None) -> np.float32:
    """The score the margin guards compare with: the row's positive's, or (None) the
    query's weakest positive's (sentence-transformers' `mine_hard_negatives`)."""
    if positive is None:
        return np.float32(np.min(c.positive_scores) if len(c.positive_scores) else np.inf)
    return np.float32(c.positive_scores[c.positive_ids.index(positive)])


def choose(spec: MineSpec, c: QueryCandidates, *, reference: float | None = None,
           rng: np.random.Generator | None = None) -> Choice:
    """Apply the guards, the rank window and the sampling to one query's candidates.

    Args:
        reference: the positive score the margin guards compare with; None takes the
            query's weakest positive (sentence-transformers' `mine_hard_negatives`).
        rng: the generator of `random` sampling (default: `query_rng(seed, query_id)`).
    """
    positive_min = reference_score(c, None) if reference is None else np.float32(reference)
    dropped: Counter = Counter()
    duplicates: list[str] = []
    seen: set[int] = set()  # text keys of the survivors so far
    rank_of = {d: i for i, d in enumerate(c.ids)}

    shown = survivors(spec, c, positive_min, c.shown_ids, c.shown_scores, c.shown_keys,
                      [rank_of.get(d, -1) for d in c.shown_ids], seen, dropped, duplicates)
    judged = set(c.shown_ids)  # a shown document that search also found is judged once
    fresh = [i for i, d in enumerate(c.ids) if d not in judged]
    mined = survivors(spec, c, positive_min, [c.ids[i] for i in fresh], np.asarray(c.scores)[fresh],
                      [c.keys[i] for i in fresh], fresh, seen, dropped, duplicates)
    if not spec.shown_first:  # shown documents compete for the window like any candidate
        mined, shown = mined + shown, []
    # stable sort: ties keep the candidates' order (the stage breaks score ties by id);
    # it matters when a cross-encoder reorders them, or shown documents join
    mined.sort(key=lambda m: -m[1])
    dropped["range_min"] += min(spec.range_min, len(mined))
    dropped["beyond_range_max"] += max(0, len(mined) - spec.range_max)
    window = mined[spec.range_min : spec.range_max]

    taken = shown[: spec.num_negatives]
    room = spec.num_negatives - len(taken)
    picked = pick(spec, window, room, rng or query_rng(spec.seed, c.query_id))
    out = taken + picked
    return Choice(ids=[d for d, _, _ in out], scores=[float(s) for _, s, _ in out], dropped=dropped,
                  from_shown=len(taken), duplicates=duplicates, considered=len(c.ids) + len(c.shown_ids),
                  ranks=[r for _, _, r in out], survivor_keys=seen)


def row_rng(spec: MineSpec, query_id: str, positive: str | None, stream: str = "") -> np.random.Generator:
    """The generator of one row (`positive`) or one query (None), per stream (`fallback`)."""
    name = query_id if positive is None else f"{query_id}\x00{positive}"
    return query_rng(spec.seed, f"{name}\x00{stream}" if stream else name)


def choose_rows(spec: MineSpec, c: QueryCandidates, rows: list[str]) -> dict[str, Choice]:
    """The negatives of each training row (query, positive) of one query, by positive id.

    `reference: pair` (the default) judges every row against its own positive's score, so a
    weak positive of a query with many graded positives does not veto every candidate for
    the strong ones; `reference: weakest` judges the query once against its lowest-scoring
    positive and gives every row the same negatives (sentence-transformers' behaviour).
    """
    if spec.reference == "weakest":
        shared = choose(spec, c)
        return {p: shared for p in rows}
    return {p: choose(spec, c, reference=reference_score(c, p), rng=row_rng(spec, c.query_id, p)) for p in rows}
