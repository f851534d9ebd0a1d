"""The `tune` section: hyperparameter search over train and mine settings with Ray Tune."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from vectune.spec._base import Section

#: parameters a search may vary: "section.field"
TUNABLE = {
    "train.learning_rate", "train.epochs", "train.batch_size", "train.warmup_ratio",
    "train.weight_decay", "train.negatives", "train.max_seq_length", "train.loss.scale",
    "mine.num_negatives", "mine.range_min", "mine.range_max", "mine.relative_margin", "mine.margin",
}


class Choice(Section):
    type: Literal["choice"] = "choice"
    values: list[Annotated[int, Field(ge=-10**9, le=10**9)] | Annotated[float, Field(ge=-1e9, le=1e9)] | str] = Field(
        min_length=1)


class Uniform(Section):
    type: Literal["uniform"] = "uniform"
    low: float = Field(ge=-1e9, le=1e9)
    high: float = Field(ge=-1e9, le=1e9)

    @model_validator(mode="after")
    def _order(self) -> "Uniform":
        if self.low >= self.high:
            raise ValueError("low must be below high")
        return self


class LogUniform(Uniform):
    type: Literal["loguniform"] = "loguniform"  # type: ignore[assignment]

    @model_validator(mode="after")
    def _positive(self) -> "LogUniform":
        if self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        return self


Domain = Annotated[Union[Choice, Uniform, LogUniform], Field(discriminator="type")]


class TuneSpec(Section):
    """Search `space` with Ray Tune; each trial trains and is scored on held-out TRAINING
    queries (never a test split). `vectune tune` writes the best as `<spec>.tuned.yaml`."""

    space: dict[str, Domain] = Field(
        default_factory=dict,
        description="Parameter (`train.learning_rate`, `mine.num_negatives`, ...) -> {type: choice|uniform|loguniform}.",
    )
    trials: int = Field(4, ge=1, le=100_000, description="Configurations sampled from the space (Tune's num_samples).")
    scheduler: Literal["asha", "none"] = Field(
        "asha", description="ASHA early stopping, or none. Trials report once, after scoring, so ASHA stops none yet.")
    metric: str = Field("ndcg@10", description="Maximised; must be one of evaluate.metrics.")
    validation_queries: int = Field(100, ge=10, le=100_000, description="Training queries held out to score trials.")
    train_queries: int | None = Field(
        None, ge=1, le=10**9, description="Per-trial budget: each trial mines and trains on this many of the remaining "
        "training queries (sampled with `seed`); the tuned spec still trains on all of them.")
    baseline: bool = Field(
        True, description="Score the spec's own values as the first trial, so the search reports what it "
        "gained over them (the trial counts toward `trials`).")
    cpus_per_trial: float = Field(
        1, gt=0, le=1024, description="CPUs of the trial itself (scoring); training workers take train.cpus_per_worker each.")
    gpus_per_trial: float = Field(0, ge=0, le=64, description="GPUs of the trial itself (scoring).")
    max_concurrent: int = Field(1, ge=1, le=4096, description="Trials running at once.")
    seed: int = Field(12, ge=0, le=2**32 - 1, description="Seeds the validation carve-out and the search's sampling.")

    @field_validator("space")
    @classmethod
    def _known(cls, value: dict) -> dict:
        unknown = sorted(set(value) - TUNABLE)
        if unknown:
            raise ValueError(f"cannot tune {unknown}; tunable: {sorted(TUNABLE)}")
        return value
