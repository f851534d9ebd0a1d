"""The `train` section: contrastive fine-tuning with sentence-transformers' trainer on Ray Train.

Defaults follow the data: `max_steps` bounds the work whatever the number of labelled
pairs (a domain with 100k pairs trains for the same budget as one with 1k); warm-up is a
share of the steps actually run; checkpoints are taken `checkpoints` times over the run
and scored on `validation_queries` held-out *training* queries ranking the corpus (or a
large sample of it holding all their labelled documents; the test split is never read
before the gate). Each learning rate of `learning_rate` + `learning_rates` is tried in
turn and cut early when it falls behind; the kept model is the best checkpoint of all,
mixed with the base model at the weight `interpolation` scores best on the same queries
(WiSE-FT). The base model is scored on those queries first: a model that does not beat
it there is never kept, and `vectune run` stops before the gate (exit 3).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from vectune.spec._base import Section


class MNRLoss(Section):
    """MultipleNegativesRankingLoss: in-batch negatives plus the mined hard negatives."""

    type: Literal["mnrl"] = "mnrl"
    scale: float = Field(20.0, gt=0, le=1000)
    gather_across_workers: bool = Field(
        True, description="Share in-batch negatives across data-parallel workers (all-gather)."
    )


class CachedMNRLoss(Section):
    """CachedMultipleNegativesRankingLoss (GradCache): large batches in small memory."""

    type: Literal["cached_mnrl"] = "cached_mnrl"
    scale: float = Field(20.0, gt=0, le=1000)
    mini_batch_size: int = Field(32, ge=1, le=65_536)
    gather_across_workers: bool = True


class TripletLoss(Section):
    """TripletLoss on (query, positive, first hard negative)."""

    type: Literal["triplet"] = "triplet"
    margin: float = Field(0.5, gt=0, le=10)


class GISTLoss(Section):
    """GISTEmbedLoss: in-batch negatives filtered by the base model as guide.

    An in-batch or hard negative the guide scores above the row's positive is treated as a
    false negative and left out of the loss: what a query with many relevant documents needs.
    """

    type: Literal["gist"] = "gist"
    temperature: float = Field(0.05, gt=0, le=10, description="Softmax temperature (1 / scale).")
    margin_strategy: Literal["absolute", "relative"] = "absolute"
    margin: float = Field(0.0, ge=0, le=2)
    gather_across_workers: bool = True


LossSpec = Annotated[Union[MNRLoss, CachedMNRLoss, TripletLoss, GISTLoss], Field(discriminator="type")]


class TrainSpec(Section):
    loss: LossSpec = Field(default_factory=MNRLoss)
    init: Literal["base", "live"] = Field(
        "base", description="Start from the base model, or continue from the model serving behind the alias "
                            "(warm start; the base when nothing is live).")
    epochs: float = Field(1.0, gt=0, le=1000)
    batch_size: int = Field(32, ge=2, le=65_536, description="Rows per optimizer step, across all workers.")
    learning_rate: float = Field(2e-5, gt=0, lt=1.0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.01, ge=0, le=10)
    max_seq_length: int | None = Field(
        None, ge=8, le=8192,
        description="The length training steps truncate texts to (null: the served length, model.max_seq_length "
                    "or the model's own). Shorter is cheaper per step; validation still scores every checkpoint, "
                    "and the kept model is saved and served, at the served length.")
    negatives: int | None = Field(None, ge=0, le=64, description="Hard negatives per row used (<= mine.num_negatives).")
    seed: int = Field(12, ge=0, le=2**32 - 1)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto (default): bf16 where the training device computes it natively (a CUDA GPU "
                            "that supports it, a CPU with avx512_bf16 or amx_bf16), fp32 elsewhere; decided on a "
                            "training worker. An explicit bf16 on a CPU without native bf16 is emulated (measured "
                            "15x slower than fp32 on an AVX2 CPU) and warned about.")
    attention_dropout: float | None = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout on the attention probabilities while training (null: the model's "
                                         "own, 0.1 for BERT-family models). Off by default: torch's fused attention "
                                         "takes no dropout on a CPU, and the unfused path it falls back to made a "
                                         "forward + backward pass of all-MiniLM-L6-v2 over 32 SciFact abstracts "
                                         "2.25x slower in fp32 (8.83 s against 3.93 s, 2 cores of an AVX-512 Xeon, "
                                         "benchmarks/precision.py). The hidden layers' dropout stays.")
    workers: int = Field(1, ge=1, le=4096)
    gpus_per_worker: float = Field(0, ge=0, le=64)
    cpus_per_worker: float = Field(1, gt=0, le=1024)
    max_steps: int | None = Field(
        150, ge=1, le=10**7, description="Training budget in optimizer steps (null: `epochs` alone decide)."
    )
    gradient_accumulation: int = Field(1, ge=1, le=4096, description="Micro-batches per optimizer step.")
    require_negatives: bool = Field(
        False, description="Drop rows short of `negatives` hard negatives (default: train them with fewer)."
    )
    checkpoint_every: int | None = Field(
        None, ge=1, le=10**7, description="Steps between checkpoints (null: `checkpoints` evenly spaced)."
    )
    checkpoints: int = Field(4, ge=1, le=1000, description="Checkpoints over the run when checkpoint_every is unset.")
    keep_checkpoints: int = Field(2, ge=1, le=1000)
    max_failures: int = Field(1, ge=0, le=100, description="Worker failures tolerated; each resumes from the last checkpoint.")
    validation_queries: Annotated[int, Field(ge=0, le=100_000)] | Literal["auto"] = Field(
        "auto", description="Training queries held out to score checkpoints and the interpolation "
                            "(0: none, keep the last; auto: 10% of the queries, 20 to 100, none below 100 queries)."
    )
    validation_docs: int = Field(
        2000, ge=10, le=10**7, description="Documents the validation queries rank: the whole corpus up to this "
                                 "size; above it, every labelled document of the validation queries plus a seeded "
                                 "random sample of the corpus, this many in all.")
    learning_rates: list[Annotated[float, Field(gt=0, lt=1.0)]] = Field(
        default_factory=list,
        description="More learning rates tried after `learning_rate`, one after another on the same step budget; "
                    "the best checkpoint of any of them on the validation queries is kept. A setting stops at a "
                    "checkpoint where it scores below an earlier setting at the same step, or after `patience` "
                    "checkpoints without gain. Needs validation queries.")
    positives_per_query: list[Annotated[int, Field(ge=1, le=1_000_000)] | None] = Field(
        default_factory=lambda: [None],
        description="How a row budget is spent on data with many positives per query, tried as settings beside the "
                    "learning rates (the validation queries keep the best): null trains on every mined row; n "
                    "trains on the queries with the most of their first n positives (mine's round-robin order), "
                    "whole, until the step budget's rows are filled: 1 spends them on as many queries as possible, "
                    "4 on a quarter as many with four positives each. Every setting runs the same steps; the mine "
                    "stage mines the pairs each one needs. Needs validation queries for more than one.")
    patience: int | None = Field(
        2, ge=1, le=1000, description="Checkpoints without a validation gain before a setting stops "
                                      "(transformers' EarlyStoppingCallback; null: never early).")
    interpolation: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=lambda: [0.0, 0.5, 0.75, 1.0],
        description="Weights of the tuned model mixed with the base (0: base, 1: tuned) tried on the "
                    "validation queries; the best is kept ([1.0]: no mixing).",
    )

    @field_validator("validation_queries")
    @classmethod
    def _validation(cls, v):
        if isinstance(v, int) and v < 0:
            raise ValueError("must be 0 or more, or `auto`")
        return v

    @field_validator("learning_rates")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        return list(dict.fromkeys(v))

    def settings(self) -> list[float]:
        """The learning rates tried, in order: `learning_rate`, then `learning_rates`."""
        return list(dict.fromkeys([self.learning_rate, *self.learning_rates]))

    def grid(self) -> list[tuple[float, int | None]]:
        """Every (learning rate, positives per query) setting tried, in order: the first is
        `learning_rate` with the first of `positives_per_query`."""
        return [(lr, k) for lr in self.settings() for k in self.positives_per_query]

    @field_validator("positives_per_query")
    @classmethod
    def _positives(cls, v: list) -> list:
        if not v:
            raise ValueError("needs at least one value ([null]: every mined row)")
        return list(dict.fromkeys(v))

    @field_validator("interpolation")
    @classmethod
    def _weights(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("needs at least one weight ([1.0]: keep the tuned model as trained)")
        if any(not 0.0 <= w <= 1.0 for w in v):
            raise ValueError(f"weights must lie in [0, 1], got {v}")
        return sorted(set(v))

    def held_out(self, queries: int) -> int:
        """How many of `queries` mined training queries are held out for validation."""
        if self.validation_queries != "auto":
            return int(self.validation_queries)
        return 0 if queries < 100 else max(20, min(100, queries // 10))
