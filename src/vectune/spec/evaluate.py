"""The `evaluate` section: held-out metrics and the promotion gate."""

from __future__ import annotations

import re

from typing import Literal

from pydantic import Field, field_validator, model_validator

from vectune.spec._base import Section

#: metric names the evaluate stage accepts: name@cutoff
METRIC_PATTERN = re.compile(r"^(ndcg|recall|mrr|map|precision)@([1-9][0-9]*)$")


class GateSpec(Section):
    """Promote the tuned model (the challenger) only if it beats the champion, the model
    serving behind the alias now (`against: live`; the base model when nothing is live) or
    the base model (`against: base`): `metric` up by at least `min_gain`, the gain
    significant (a paired permutation test over the split's queries, p <= `max_p_value`),
    and none of `no_regress` down by more than `tolerance`."""

    metric: str = "ndcg@10"
    against: Literal["live", "base"] = Field(
        "live", description="The champion: the model serving behind the alias (base if none), or the base model.")
    min_gain: float = Field(0.005, ge=0.0, le=1.0, description="Absolute gain over the champion required.")
    max_p_value: float = Field(
        0.05, gt=0.0, le=1.0, description="Largest one-sided p-value of the gain (paired permutation test over "
                                           "queries) that still promotes; 1: no significance required.")
    resamples: int = Field(10_000, ge=100, le=1_000_000, description="Permutations and bootstrap resamples.")
    seed: int = Field(12, ge=0, le=2**32 - 1, description="Seeds the permutation test and the bootstrap.")
    no_regress: list[str] = Field(default_factory=lambda: ["recall@100"])
    tolerance: float = Field(0.0, ge=0.0, le=1.0)

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        return _check_metric(value)

    @field_validator("no_regress")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        return [_check_metric(v) for v in value]


def _check_metric(value: str) -> str:
    value = value.strip().lower()
    if not METRIC_PATTERN.match(value):
        raise ValueError(
            f"unknown metric {value!r}: use name@k with name one of ndcg, recall, mrr, map, precision"
        )
    return value


class EvaluateSpec(Section):
    """Which split to score and how."""

    split: str = Field("test", description="A key of `data.splits`.")
    metrics: list[str] = Field(default_factory=lambda: ["ndcg@10", "recall@100", "mrr@10"], min_length=1)
    k: int | None = Field(None, ge=1, le=100_000, description="Retrieval depth; defaults to the largest metric cutoff.")
    batch_size: int = Field(1024, ge=1, le=1 << 20, description="Documents per Ray Data batch handed to `encode`.")
    concurrency: int | None = Field(
        None, ge=1, le=4096, description="Encoder actors (one model copy each); sized to the cluster's CPUs when unset "
        "(on 2 CPUs: 2 actors x 1 torch thread, the fastest shape in benchmarks/encode.py)."
    )
    num_gpus: float = Field(0, ge=0, le=64, description="GPUs per encoder actor (fractions share a GPU).")
    overlap: Literal["error", "drop", "allow"] = Field(
        "error", description="Queries of the split that are training queries too (by id or identical text): "
                             "an error; `drop`: leave them out of training (with a warning), so the gate stays "
                             "held out; `allow`: keep them (the scores then measure memory; tests and demos).")
    through: Literal["index", "exact"] = Field(
        "index", description="How `run` scores the models its gate compares: `index`: through the collections that "
                             "serve them (the challenger's new version, built and verified before the gate and "
                             "promoted as it is if the gate passes; the live one as served now; the base through a "
                             "scoring collection kept across runs), so approximate search and fusion are in the "
                             "numbers; `exact`: every document scored exactly, no collection built.")
    search_block: int = Field(8192, ge=1, le=1 << 22, description="Corpus rows scored per block in exact search.")
    gate: GateSpec = Field(default_factory=GateSpec)

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        return [_check_metric(v) for v in value]

    @model_validator(mode="after")
    def _depth_covers_metrics(self) -> "EvaluateSpec":
        deepest = max(int(m.split("@")[1]) for m in self.metrics)
        if self.k is not None and self.k < deepest:
            raise ValueError(
                f"k={self.k} is shallower than the deepest metric cutoff ({deepest}): "
                f"those metrics would be computed on truncated rankings; drop k or set it >= {deepest}"
            )
        return self

    @property
    def depth(self) -> int:
        cutoffs = [int(m.split("@")[1]) for m in self.metrics]
        return self.k or max(cutoffs)
