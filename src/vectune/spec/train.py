"""The `train` section: contrastive fine-tuning on Ray Train."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from vectune.spec._base import Section


class MNRLoss(Section):
    """MultipleNegativesRankingLoss: in-batch negatives plus the mined hard negatives."""

    type: Literal["mnrl"] = "mnrl"
    scale: float = Field(20.0, gt=0)
    gather_across_workers: bool = Field(
        True, description="Share in-batch negatives across data-parallel workers (all-gather)."
    )


class CachedMNRLoss(Section):
    """CachedMultipleNegativesRankingLoss (GradCache): large batches in small memory."""

    type: Literal["cached_mnrl"] = "cached_mnrl"
    scale: float = Field(20.0, gt=0)
    mini_batch_size: int = Field(32, ge=1)
    gather_across_workers: bool = True


class TripletLoss(Section):
    """TripletLoss on (query, positive, first hard negative)."""

    type: Literal["triplet"] = "triplet"
    margin: float = Field(0.5, gt=0)


LossSpec = Annotated[Union[MNRLoss, CachedMNRLoss, TripletLoss], Field(discriminator="type")]


class TrainSpec(Section):
    loss: LossSpec = Field(default_factory=MNRLoss)
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(32, ge=2, description="Rows per optimizer step, across all workers.")
    learning_rate: float = Field(2e-5, gt=0, lt=1.0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    max_seq_length: int | None = Field(None, ge=8, description="Overrides model.max_seq_length while training.")
    negatives: int | None = Field(None, ge=0, description="Hard negatives per row used (<= mine.num_negatives).")
    seed: int = 12
    precision: Literal["fp32", "bf16"] = "fp32"
    workers: int = Field(1, ge=1)
    gpus_per_worker: float = Field(0, ge=0)
    cpus_per_worker: float = Field(1, gt=0)
    checkpoint_every: int = Field(50, ge=1, description="Steps between checkpoints.")
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0, description="Worker failures tolerated; each resumes from the last checkpoint.")
    validation_queries: int = Field(
        0, ge=0, description="Training queries held out to pick the best checkpoint (0: keep the last)."
    )
