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
    values: list[float | int | str] = Field(min_length=1)


class Uniform(Section):
    type: Literal["uniform"] = "uniform"
    low: float
    high: float

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
    space: dict[str, Domain] = Field(default_factory=dict)
    trials: int = Field(4, ge=1)
    scheduler: Literal["asha", "none"] = "asha"
    metric: str = "ndcg@10"
    validation_queries: int = Field(100, ge=10, description="Training queries held out to score trials.")
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: float = Field(0, ge=0)
    max_concurrent: int = Field(1, ge=1)
    seed: int = 12

    @field_validator("space")
    @classmethod
    def _known(cls, value: dict) -> dict:
        unknown = sorted(set(value) - TUNABLE)
        if unknown:
            raise ValueError(f"cannot tune {unknown}; tunable: {sorted(TUNABLE)}")
        return value
