"""The `mine` section: hard-negative mining with false-negative guards.

Names follow `sentence_transformers.util.mine_hard_negatives` where they overlap:
candidates ranked `range_min` .. `range_max` by the (base) model are eligible;
`margin` drops a candidate scoring more than `positive - margin`; `relative_margin`
drops one scoring more than `positive * (1 - relative_margin)`; `max_score` drops
one above an absolute score; then `num_negatives` are taken (`top` or `random`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vectune.spec._base import Section


class MineSpec(Section):
    num_negatives: int = Field(3, ge=1, le=64)
    range_min: int = Field(0, ge=0, description="Skip this many top-ranked candidates.")
    range_max: int = Field(100, ge=1, description="Look no deeper than this rank.")
    margin: float | None = Field(None, description="Absolute: keep candidates with score <= positive - margin.")
    relative_margin: float | None = Field(
        0.05, ge=0.0, lt=1.0, description="Relative: keep candidates with score <= positive * (1 - relative_margin)."
    )
    max_score: float | None = Field(None, description="Drop candidates scoring above this.")
    sampling: Literal["top", "random"] = "top"
    seed: int = 12
    cross_encoder: str | None = Field(None, description="Local path of a cross-encoder that rescores candidates.")
    max_queries: int | None = Field(None, ge=1, description="Cap on training queries, sampled with `seed`.")
    max_pairs: int | None = Field(None, ge=1, description="Cap on (query, positive) pairs, sampled with `seed`.")
    batch_size: int = Field(1024, ge=1, description="Documents per Ray Data batch (encode and search).")
    concurrency: int = Field(1, ge=1, description="Encoder actors.")

    @model_validator(mode="after")
    def _window(self) -> "MineSpec":
        if self.range_min >= self.range_max:
            raise ValueError(f"range_min ({self.range_min}) must be below range_max ({self.range_max})")
        if self.range_max - self.range_min < self.num_negatives:
            raise ValueError(
                f"the window range_min..range_max ({self.range_min}..{self.range_max}) holds fewer "
                f"candidates than num_negatives ({self.num_negatives})"
            )
        return self
