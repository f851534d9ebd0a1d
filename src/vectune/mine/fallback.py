"""Fallback negatives: deeper candidates for rows whose window the guards emptied, taken
only from bands of the ranking whose estimated false-negative rate is under the cap.

Pure and driver-side, like `select`: the stage searches deeper for the queries that need
it and fills `QueryCandidates.deep_*`; this module decides. The estimate (the labelled
positives' density in a band of ranks) is argued in the `mine` spec section's docstring.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from vectune.mine.select import (Band, Choice, Fallback, QueryCandidates, pick, reference_score, row_rng,
                                 survivors)
from vectune.spec.mine import MineSpec


def estimate(labelled: int, candidates: int, label_recall: float) -> float:
    """Estimated false-negative rate of a document drawn from a band of `candidates` ranked
    documents of which `labelled` are the query's labelled positives: L / (N - L) unlabelled
    positives per other document when the labels hold `label_recall` of the relevant ones
    there, scaled by (1 - label_recall) / label_recall; 1 when the band holds no other
    document (and never above 1: it is a rate)."""
    others = candidates - labelled
    if others <= 0:
        return 1.0
    return min(1.0, labelled / others * (1.0 - label_recall) / label_recall)


class Bands:
    """A query's ranking cut into bands of `width` ranks, with the labelled positives of each."""

    def __init__(self, ids: list[str], keys: list[int], c: QueryCandidates, width: int, label_recall: float):
        known, texts = set(c.positive_ids), set(c.positive_keys)
        flags = np.asarray([d in known or k in texts for d, k in zip(ids, keys)], dtype=bool)
        self.width, self.label_recall, self.size = width, label_recall, len(ids)
        n_bands = -(-len(ids) // width)
        self.labelled = [int(flags[b * width : (b + 1) * width].sum()) for b in range(n_bands)]

    def band(self, b: int) -> Band:
        start, end = b * self.width, min(self.size, (b + 1) * self.width)
        return Band(start=start, end=end, candidates=end - start, labelled=self.labelled[b],
                    estimate=estimate(self.labelled[b], end - start, self.label_recall))

    def estimate_at(self, rank: int) -> float | None:
        """The estimate of the band holding `rank` (None for -1: no rank)."""
        if rank < 0 or rank >= self.size:
            return None
        return self.band(rank // self.width).estimate


def choose_fallback(spec: MineSpec, c: QueryCandidates, choice: Choice, *, reference: np.float32,
                    rng: np.random.Generator, bands: Bands | None = None) -> Choice:
    """The row's negatives from the deeper ranking, band by band, when its window was empty.

    Candidates at ranks `deep_start` onwards (and not judged by the window already) pass
    the same guards against the same `reference`; a band's survivors join the fallback
    window unless its estimate is above `fallback.max_false_negative_rate`; the walk stops
    once the window holds `range_max - range_min` survivors. Then `sampling` picks as for
    the ordinary window. Returns the choice with the fallback's negatives (or none).
    `bands`: the deeper ranking's, when the caller has them already (one per query).
    """
    fb = spec.fallback
    bands = bands or Bands(c.deep_ids, c.deep_keys, c, fb.band, fb.label_recall)
    judged = set(c.ids) | set(c.shown_ids)
    ranks = [r for r in range(c.deep_start, len(c.deep_ids)) if c.deep_ids[r] not in judged]
    seen, dropped, duplicates = set(choice.survivor_keys), Counter(), []
    size = spec.range_max - spec.range_min
    window: list = []
    visited: list[Band] = []
    i = 0
    while i < len(ranks) and len(window) < size:
        b = ranks[i] // fb.band
        j = i
        while j < len(ranks) and ranks[j] // fb.band == b:
            j += 1
        here = ranks[i:j]
        band, local = bands.band(b), set(seen)
        kept = survivors(spec, c, reference, [c.deep_ids[r] for r in here], c.deep_scores[here],
                         [c.deep_keys[r] for r in here], here, local, dropped, duplicates)
        band.survivors = len(kept)
        if kept:
            band.status = "refused" if band.estimate > fb.max_false_negative_rate else "used"
        if band.status == "used":
            seen = local
            window += kept
        visited.append(band)
        i = j
    window.sort(key=lambda m: -m[1])  # stable: a cross-encoder may reorder ranks
    out = pick(spec, window[:size], spec.num_negatives, rng)
    result = Fallback(bands=visited, dropped=dropped, considered=i,
                      taken=len(out), duplicates=duplicates)
    return replace(choice, ids=[d for d, _, _ in out], scores=[float(s) for _, s, _ in out],
                   ranks=[r for _, _, r in out], estimates=[bands.estimate_at(r) for _, _, r in out],
                   from_fallback=len(out), fallback=result)


def complete_rows(spec: MineSpec, c: QueryCandidates, choices: dict[str, Choice]) -> dict[str, Choice]:
    """The rows of one query after the fallback: each negative's estimate, and for rows whose
    window was empty (when the fallback is on and the deeper ranking is there) the
    fallback's negatives. A choice shared by rows (`reference: weakest`) stays shared."""
    fb = spec.fallback
    ordinary = Bands(c.ids, c.keys, c, fb.band, fb.label_recall)
    deep = Bands(c.deep_ids, c.deep_keys, c, fb.band, fb.label_recall) if fb.enabled and c.deep_ids else None
    done: dict[int, Choice] = {}
    out = {}
    for p, choice in choices.items():
        if id(choice) not in done:
            shared = spec.reference == "weakest"
            if choice.ids or deep is None:
                done[id(choice)] = replace(choice, estimates=[ordinary.estimate_at(r) for r in choice.ranks])
            else:
                done[id(choice)] = choose_fallback(
                    spec, c, choice, reference=reference_score(c, None if shared else p),
                    rng=row_rng(spec, c.query_id, None if shared else p, "fallback"), bands=deep)
        out[p] = done[id(choice)]
    return out
