"""Choosing a query's negatives from its ranked candidates: guards, window, sampling.

Pure and driver-side: the Ray passes gather the candidates (ids, scores, text hashes),
this module decides. The semantics are those of the `mine` spec section's docstring.
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


@dataclass
class Choice:
    """The negatives chosen for one training row (or one query, under `reference: weakest`),
    and what the guards dropped on the way."""

    ids: list[str]
    scores: list[float]
    dropped: Counter
    from_shown: int = 0
    considered: int = 0  # candidates looked at: ranked plus shown
    duplicates: list[str] = field(default_factory=list)  # candidates whose text equals a positive's

    @property
    def emptied_by(self) -> str | None:
        """None when negatives were found; else the guard that dropped most of the candidates
        (`window` when survivors were all skipped by range_min, `no_candidates` when there were none)."""
        if self.ids:
            return None
        guards = {g: self.dropped.get(g, 0) for g in GUARDS}
        if any(guards.values()):
            return max(GUARDS, key=lambda g: (guards[g], -GUARDS.index(g)))
        return "window" if self.dropped.get("range_min", 0) else "no_candidates"


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


def choose(spec: MineSpec, c: QueryCandidates, *, reference: float | None = None,
           rng: np.random.Generator | None = None) -> Choice:
    """Apply the guards, the rank window and the sampling to one query's candidates.

    Args:
        reference: the positive score the margin guards compare with; None takes the
            query's weakest positive (sentence-transformers' `mine_hard_negatives`).
        rng: the generator of `random` sampling (default: `query_rng(seed, query_id)`).
    """
    if reference is None:
        reference = np.min(c.positive_scores) if len(c.positive_scores) else np.inf
    positive_min = np.float32(reference)
    dropped: Counter = Counter()
    duplicates: list[str] = []
    seen: set[int] = set()  # text keys of the survivors so far

    def survivors(ids, scores, keys) -> list[tuple[str, np.float32]]:
        kept = []
        for doc_id, score, key in zip(ids, scores, keys):
            reason = _guard(spec, c, positive_min, doc_id, np.float32(score), key)
            if reason is None and key in seen:
                reason = "duplicate_of_negative"
            if reason is None:
                seen.add(key)
                kept.append((doc_id, np.float32(score)))
            else:
                dropped[reason] += 1
                if reason == "duplicate_of_positive":
                    duplicates.append(doc_id)
        return kept

    shown = survivors(c.shown_ids, c.shown_scores, c.shown_keys)
    judged = set(c.shown_ids)  # a shown document that search also found is judged once
    fresh = [i for i, d in enumerate(c.ids) if d not in judged]
    mined = survivors([c.ids[i] for i in fresh], np.asarray(c.scores)[fresh], [c.keys[i] for i in fresh])
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
    if spec.sampling == "top" or len(window) <= room:
        picked = window[:room]
    else:
        rng = rng or query_rng(spec.seed, c.query_id)
        idx = np.sort(rng.choice(len(window), size=room, replace=False))
        picked = [window[i] for i in idx]  # window is best first, so sorted indices keep that order
    out = taken + picked
    return Choice(ids=[d for d, _ in out], scores=[float(s) for _, s in out], dropped=dropped,
                  from_shown=len(taken), duplicates=duplicates, considered=len(c.ids) + len(c.shown_ids))


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
    score_of = dict(zip(c.positive_ids, (np.float32(s) for s in c.positive_scores)))
    return {p: choose(spec, c, reference=score_of[p], rng=query_rng(spec.seed, f"{c.query_id}\x00{p}"))
            for p in rows}
