"""The `mine` section: hard-negative mining with false-negative guards.

Semantics follow `sentence_transformers.util.mine_hard_negatives` (6.x) where the names
are the same (`margin` is its `absolute_margin`):

1. Candidates of a query are its `range_max + P` best documents (P = its number of labelled
   positives) in the ranking `search` names: `dense`, the base model's exact search; `hybrid`,
   the base model's and BM25's (`bm25` section) top `search.prefetch` each, fused as the
   `search` section fuses them (`search.fusion`, `search.rrf_k`), so a negative is what the
   served system would put in front of the positive; `served` (the default): `hybrid` when
   `search.mode` is hybrid, else `dense`. Scores are the base model's (exact, from its cached
   vectors), or the cross-encoder's when one is set; they decide the guards, never the order
   of a hybrid ranking.
2. Guards drop, in this order: the query's labelled positives (all of them, whatever the
   row); documents whose normalised text (lower-case, whitespace collapsed) equals a
   positive's; `margin`: a score above `reference - margin`; `relative_margin`: a score
   above `reference - |reference| * relative_margin`; `max_score`: a score above it.
   `reference` is the score of the row's own positive (`reference: pair`, the default),
   or of the query's weakest positive (`reference: weakest`, sentence-transformers'
   choice "to be on the safe side", which with many graded positives per query lets one
   weak positive veto almost every candidate of the query).
   Of several candidates with the same normalised text only the best is kept
   (sentence-transformers de-duplicates its corpus by text to the same effect).
3. The survivors, best first, are ranked 0, 1, 2, ...; ranks `range_min` up to
   `range_max - 1` form the window (so `range_min` skips the best *surviving* candidates,
   as in sentence-transformers, which applies it after the margins).
4. `num_negatives` are taken from the window: the best (`top`) or a uniform sample
   (`random`, seeded per row from `seed`), listed best first.
5. `max_queries` and `max_pairs` sample fairly across queries: queries are drawn with
   `seed`, then pairs are taken round-robin (each query's positives shuffled, higher grades
   first), so a query with a thousand positives does not crowd out the rest.
   `max_pairs: auto` caps the pairs at what the training budget uses (train.max_steps x
   train.batch_size, plus the validation queries' pairs). Each row records `positive_rank`:
   its positive's place in its query's round-robin order (0: the first taken), so training
   can trade positives per query for queries; the audit's `budget` says how a cap was
   spent (queries, positives per query) and `output` what came out.
6. `fallback` (on by default): a row whose window the guards emptied (with many positives
   per query, every candidate above a weak positive falls inside the margin) gets its
   negatives from further down the ranking: ranks `range_max + P` up to
   `range_max + P + fallback.depth`, under the same guards (the same reference; `range_min`
   is not applied again, those ranks are already far below the window). The fallback
   window is the first `range_max - range_min` survivors, taken as in 4; the rows record
   how many of their negatives came from it (`fallback_negatives`) and each negative's rank.
   Rows whose window is not empty are never touched, so single-positive data is unchanged
   but for its rare emptied rows. The deeper ranks are the base model's dense ranking, whatever
   `search` says (BM25 ranks nothing for a document without the query's terms).

   Deep candidates are likelier to be unlabelled positives than a hard negative should be,
   so each is audited. The ranking is cut into bands of `fallback.band` ranks; in each band
   the labelled positives of the query (and copies of their text) are counted: the labels
   are a sample of the relevant documents, so where labelled positives are dense the
   unlabelled ones are too. If the labels hold a share `label_recall` of the relevant
   documents at those ranks, a band of N documents holding L labelled positives holds
   about L (1 - label_recall) / label_recall unlabelled ones among its N - L other
   documents, hence the estimated false-negative rate of a negative taken from it:

       estimate = L / (N - L) * (1 - label_recall) / label_recall

   (at the default 0.5: one unlabelled positive for each labelled one). It needs no model
   and no test split: only the training labels and the ranking the mine already has, with
   or without a cross-encoder. Bands whose estimate is above
   `fallback.max_false_negative_rate` are refused (the walk goes deeper; a row whose every
   band with survivors is refused gets none and is reported as emptied by `fallback_cap`).
   The audit reports the estimate over the fallback negatives, over the ordinary ones (the
   same bands, for comparison), and the bands used, refused and empty.

   Costs: for the queries that need it only, a second search `depth` deeper (read from the
   embedding cache when it holds the corpus), one light pass for the new candidates' text
   hashes, and with a cross-encoder its scores of those candidates.

Click logs (`data.train.format: clicks`): shown-but-unclicked documents are candidates
too; they pass the same guards but not the rank window, and are taken first.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from vectune.spec._base import Section


class FallbackSpec(Section):
    """Negatives from deeper ranks for rows whose window the guards emptied, with an audited
    false-negative rate (see the module docstring, step 6)."""

    enabled: bool = Field(True, description="Give rows whose window the guards emptied negatives from deeper ranks.")
    depth: int = Field(
        1000, ge=1, le=100_000,
        description="Ranks searched below the ordinary depth (range_max + the query's positives) for such rows.")
    band: int = Field(
        100, ge=5, le=100_000, description="Width in ranks of the bands the false-negative rate is estimated on.")
    max_false_negative_rate: float = Field(
        0.1, ge=0.0, le=1.0,
        description="Bands whose estimated false-negative rate is above this are not used (the walk goes deeper).")
    label_recall: float = Field(
        0.5, gt=0.0, le=1.0,
        description="Assumed share of the relevant documents at a band's ranks that the labels hold (the "
                    "estimate's assumption: 0.5, one unlabelled positive for each labelled one).")


class MineSpec(Section):
    """How hard negatives are mined for the training pairs (see the module docstring)."""

    search: Literal["served", "dense", "hybrid"] = Field(
        "served", description="The ranking candidates come from: the base model's (`dense`), the base model and "
                              "BM25 fused as `search` fuses them (`hybrid`), or the mode `search` serves (`served`).")
    num_negatives: int = Field(3, ge=1, le=64, description="Negatives per query (fewer when too few survive).")
    range_min: int = Field(0, ge=0, le=100_000, description="Skip this many best-ranked surviving candidates.")
    range_max: int = Field(100, ge=1, le=100_000, description="Look no deeper than this rank (plus the query's positives).")
    margin: float | None = Field(
        None, ge=0.0, le=2.0, description="Absolute: drop a candidate scoring above (lowest positive score - margin)."
    )
    relative_margin: float | None = Field(
        0.05, ge=0.0, lt=1.0,
        description="Relative: drop a candidate scoring above positive - |positive| * relative_margin.",
    )
    max_score: float | None = Field(None, ge=-1e6, le=1e6, description="Drop a candidate scoring above this.")
    sampling: Literal["top", "random"] = Field("top", description="Take the window's best, or sample it.")
    seed: int = Field(12, ge=0, le=2**32 - 1, description="Seeds `random` sampling and the max_queries / max_pairs caps.")
    cross_encoder: str | None = Field(
        None, description="Local folder of a cross-encoder: its scores replace the bi-encoder's for every guard."
    )
    shown_first: bool = Field(
        True, description="Click logs: take shown-but-unclicked documents (that pass the guards) before mined ones."
    )
    max_queries: int | None = Field(None, ge=1, le=10**9, description="Cap on training queries, sampled with `seed`.")
    max_pairs: Annotated[int, Field(ge=1, le=10**9)] | Literal["auto"] | None = Field(
        "auto", description="Cap on (query, positive) pairs, round-robin across queries; `auto`: what training uses."
    )
    reference: Literal["pair", "weakest"] = Field(
        "pair", description="Margin guards compare with the row's own positive (`pair`) or the query's weakest (`weakest`)."
    )
    fallback: FallbackSpec = Field(default_factory=FallbackSpec)
    batch_size: int = Field(1024, ge=1, le=1 << 20, description="Documents per Ray Data batch (encode and search).")
    concurrency: int | None = Field(
        None, ge=1, le=4096, description="Encoder actors (one model copy each); sized to the cluster's CPUs when unset."
    )
    num_gpus: float = Field(0, ge=0, le=64, description="GPUs per encoder actor (fractions share a GPU).")

    @model_validator(mode="after")
    def _window(self) -> "MineSpec":
        if isinstance(self.max_pairs, int) and self.max_pairs < 1:
            raise ValueError(f"max_pairs must be at least 1 (or `auto`, or null for no cap), not {self.max_pairs}")
        if self.range_min >= self.range_max:
            raise ValueError(f"range_min ({self.range_min}) must be below range_max ({self.range_max})")
        if self.range_max - self.range_min < self.num_negatives:
            raise ValueError(
                f"the window range_min..range_max ({self.range_min}..{self.range_max}) holds fewer "
                f"candidates than num_negatives ({self.num_negatives})"
            )
        return self
