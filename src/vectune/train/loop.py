"""What every Ray Train worker runs: sentence-transformers' own trainer, top to bottom.

`SentenceTransformerTrainer` brings the no-duplicates batch sampler (no batch holds one
query, or one document, twice, so a query's other positives are never its in-batch
negatives), one dataset per number of hard negatives (rows short of negatives still
train, on in-batch negatives and the hard ones they have), every library loss,
gradient accumulation, mixed precision and evaluators. Ray Train starts the process
group; `prepare_trainer` and `RayTrainReportCallback` hand each checkpoint (with its
validation score) to Ray Train, which keeps the best and restores the latest after a
worker failure or a re-run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vectune import _faults

#: the Hugging Face checkpoint folder inside each Ray Train checkpoint (RayTrainReportCallback's)
HF_CHECKPOINT = "checkpoint"


@dataclass(frozen=True)
class LoopConfig:
    """Everything a worker needs, decided on the driver (see `vectune.train.plan`)."""

    model_path: str
    base_model_path: str  # the guide of GIST losses
    loss: Any  # the spec's loss section
    groups: tuple[int, ...]  # hard-negative counts with a dataset each, largest first
    micro_batch: int  # rows per worker per forward pass
    accumulation: int
    total_steps: int
    warmup_steps: int
    checkpoint_every: int
    learning_rate: float
    weight_decay: float
    precision: str
    max_seq_length: int | None  # while training (train.max_seq_length; None: the served length)
    seed: int
    threads: int
    prompts: dict[str, str] = field(default_factory=dict)
    validation: dict | None = None  # see vectune.train.validation.validation_set
    metrics: tuple[str, ...] = ("ndcg@10",)
    primary: str = "ndcg@10"
    log_path: str | None = None
    progress: Any = None  # a vectune.progress counter actor, ticked by rank 0
    #: the best validation score an earlier setting reached at each step: this one stops at a
    #: checkpoint where it scores below (successive halving, run one setting after another)
    rivals: dict[int, float] = field(default_factory=dict)
    patience: int | None = None  # checkpoints without gain before stopping (EarlyStoppingCallback)
    score_base: bool = False  # score the starting model on the validation queries before step 1
    attention_dropout: float | None = 0.0  # the spec's train.attention_dropout (None: the model's own)
    #: the length the stages encode at (model.max_seq_length; None: the model's own): validation
    #: scores every checkpoint at it, whatever length the steps train at
    served_max_seq_length: int | None = None


def score_key(primary: str) -> str:
    """The metric Ray Train ranks checkpoints by (the HF trainer prefixes `eval_`)."""
    return f"eval_val_{primary}"


def datasets_from_table(table, groups: tuple[int, ...]):
    """Rows (query, positive, negatives, group) -> one Hugging Face Dataset per hard-negative
    count: `anchor`, `positive`, `negative_1..k` (the columns the losses read in order)."""
    import pyarrow as pa
    from datasets import Dataset, DatasetDict

    out = {}
    for k in groups:
        part = table.filter(pa.compute.equal(table["group"], k))
        negs = part["negatives"].to_pylist()
        cols = {"anchor": part["query"].to_pylist(), "positive": part["positive"].to_pylist()}
        for j in range(k):
            cols[f"negative_{j + 1}"] = [n[j] for n in negs]
        out[f"negatives_{k}"] = Dataset.from_dict(cols)
    return DatasetDict(out)


def _callbacks(config: LoopConfig, rank: int, world: int):
    from transformers import TrainerCallback

    class History(TrainerCallback):
        """Step wall time into the trainer's own log history (so it survives a resume),
        the progress counter, and loss.jsonl at the end (rank 0)."""

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if rank != 0 or not logs or "loss" not in logs:
                return
            entry = state.log_history[-1]
            entry["seconds"] = round(time.perf_counter() - getattr(self, "start", time.perf_counter()), 3)
            entry["time"] = time.time()
            from vectune.progress import tick_to

            tick_to(config.progress, state.global_step, loss=float(logs["loss"]))

        def on_train_end(self, args, state, control, **kwargs):
            if rank != 0 or not config.log_path:
                return
            lines = [json.dumps({"step": h["step"], "epoch": h.get("epoch"), "loss": h["loss"],
                                 "lr": h.get("learning_rate"), "grad_norm": h.get("grad_norm"),
                                 "seconds": h.get("seconds"), "time": h.get("time")})
                     for h in state.log_history if "loss" in h and "step" in h]
            Path(config.log_path).write_text("\n".join(lines) + "\n")
            evals = [{"step": h["step"], **{k[len("eval_val_"):]: v for k, v in h.items() if k.startswith("eval_val_")}}
                     for h in state.log_history if any(k.startswith("eval_val_") for k in h)]
            if evals:  # the validation score of each checkpoint, beside the loss log
                Path(config.log_path).with_name(Path(config.log_path).name.replace("loss", "validation", 1)).write_text(
                    "\n".join(json.dumps(e) for e in evals) + "\n")

    class FaultPoint(TrainerCallback):
        """Where the resume tests make a worker die (`vectune._faults`; inert otherwise)."""

        def on_step_end(self, args, state, control, **kwargs):
            _faults.hit("train.step", step=state.global_step, rank=rank, world=world)

    class BehindRivals(TrainerCallback):
        """Stop this setting at a checkpoint where an earlier one scored higher at the same
        step: it can still win only by overtaking later, which the budget does not wait for."""

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            score = (metrics or {}).get(score_key(config.primary))
            rival = config.rivals.get(state.global_step)
            if score is not None and rival is not None and score < rival:
                control.should_training_stop = True

    return [History(), FaultPoint(), BehindRivals()]


def build_trainer(config: LoopConfig, datasets, *, rank: int, world: int, device, work: str):
    """The `SentenceTransformerTrainer` every worker runs, with Ray Train's reporting."""
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Args
    from sentence_transformers.base.sampler import BatchSamplers, MultiDatasetBatchSamplers
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback

    from vectune.embed.models import load_for_training
    from vectune.train.losses import build_loss
    from vectune.train.validation import RetrievalEvaluator

    model = load_for_training(config.model_path, device=str(device), attention_dropout=config.attention_dropout)
    served = config.served_max_seq_length or model.max_seq_length
    model.max_seq_length = served
    if config.validation and config.score_base:  # the starting model's corpus vectors, from the mine's cache
        from vectune.train.validation import seed_from_cache

        seed_from_cache(model, config.validation, config.precision)
    if config.max_seq_length:  # the steps' length; validation scores at the served one
        model.max_seq_length = config.max_seq_length
    loss = build_loss(config.loss, model, world, guide=config.base_model_path, precision=config.precision)
    evaluator = RetrievalEvaluator.from_set(config.validation, config.metrics, config.primary,
                                            precision=config.precision, max_seq_length=served,
                                            progress=config.progress if rank == 0 else None) \
        if config.validation else None
    args = Args(
        output_dir=work,
        max_steps=config.total_steps,
        per_device_train_batch_size=config.micro_batch,
        gradient_accumulation_steps=config.accumulation,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type="linear",
        # one fused pass over all parameters (CPU and CUDA), ~9x faster than the loop of small ops
        optim="adamw_torch_fused" if device.type in ("cpu", "cuda") else "adamw_torch",
        max_grad_norm=1.0,
        bf16=config.precision == "bf16",
        use_cpu=device.type == "cpu",
        seed=config.seed,
        data_seed=config.seed,
        # no batch holds one text twice, in any column: a query's other positives, or a
        # document that is one row's positive and another's negative, never meet in a batch
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        multi_dataset_batch_sampler=MultiDatasetBatchSamplers.PROPORTIONAL,
        prompts=config.prompts or None,
        dataloader_drop_last=True,
        save_strategy="steps",
        save_steps=config.checkpoint_every,
        eval_strategy="steps" if evaluator else "no",
        eval_steps=config.checkpoint_every if evaluator else None,
        eval_on_start=bool(evaluator) and config.score_base,
        # the trainer tracks the best validation score (EarlyStoppingCallback reads it, and the
        # best checkpoint is the model in memory at the end; Ray Train keeps its own copy)
        metric_for_best_model=score_key(config.primary) if evaluator else None,
        greater_is_better=True,
        load_best_model_at_end=bool(evaluator) and config.patience is not None,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        ddp_find_unused_parameters=True,  # the transformer's pooler is never used by sentence-transformers
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=datasets, loss=loss, evaluator=evaluator,
        callbacks=[RayTrainReportCallback(), *_callbacks(config, rank, world),
                   *([EarlyStoppingCallback(early_stopping_patience=config.patience)]
                     if evaluator and config.patience else [])],
    )
    # the trainer prints every step's log dict (disable_tqdm swaps its bar for a printer):
    # vectune's own progress line and loss.jsonl carry them, so the worker keeps quiet
    trainer.remove_callback(PrinterCallback)
    return prepare_trainer(trainer)


def train_loop(loop_config: dict) -> None:
    """Ray Train entry point (runs on every worker): `loop_config["config"]` is a LoopConfig."""
    import pyarrow as pa
    import ray.train
    import torch

    config: LoopConfig = loop_config["config"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config.threads)
    device = ray.train.torch.get_device()
    shard = ray.train.get_dataset_shard("train")
    table = pa.concat_tables(list(shard.iter_batches(batch_format="pyarrow", batch_size=4096)))
    work = tempfile.mkdtemp(prefix="vectune-train-")
    trainer = build_trainer(config, datasets_from_table(table, config.groups), rank=rank, world=world,
                            device=device, work=work)
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a re-run of the run id, or a restart after a worker failure
        with checkpoint.as_directory() as d:
            state = json.loads((Path(d) / HF_CHECKPOINT / "trainer_state.json").read_text())
            resume = os.path.join(work, f"checkpoint-{state['global_step']}")
            shutil.copytree(Path(d) / HF_CHECKPOINT, resume)
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        shutil.rmtree(work, ignore_errors=True)
