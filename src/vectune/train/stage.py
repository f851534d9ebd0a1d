"""The train stage: mined triples -> a fine-tuned sentence-transformers model, on Ray Train."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from vectune.errors import ModelError, StageError
from vectune.progress import track
from vectune.runs import Run
from vectune.spec import Spec
from vectune.train.loop import STATE_FILE, train_loop
from vectune.train.losses import columns_for

log = logging.getLogger("vectune")


class _Expand:
    """Ray Data UDF: triples rows -> query, positive, negative_0..n-1 (rows short of negatives dropped)."""

    def __init__(self, negatives: int, exclude: set[str]):
        self.negatives, self.exclude = negatives, exclude

    def __call__(self, batch: dict) -> dict:
        keep = [i for i, (q, negs) in enumerate(zip(batch["query_id"], batch["negatives"]))
                if q not in self.exclude and len(negs) >= self.negatives]
        out = {"query": [str(batch["query"][i]) for i in keep], "positive": [str(batch["positive"][i]) for i in keep]}
        for j in range(self.negatives):
            out[f"negative_{j}"] = [str(batch["negatives"][i][j]) for i in keep]
        return out


def _plan_rows(triples: Path, negatives: int, validation_queries: int, seed: int) -> tuple[int, set[str], int]:
    """Training row count, held-out validation query ids, rows dropped for lack of negatives."""
    table = pq.read_table(triples, columns=["query_id", "negative_ids"])
    qids = table.column("query_id").to_pylist()
    lengths = [len(x) for x in table.column("negative_ids").to_pylist()]
    held: set[str] = set()
    if validation_queries:
        unique = sorted(set(qids))
        if validation_queries >= len(unique):
            raise StageError(f"train.validation_queries ({validation_queries}) leaves no training queries "
                             f"({len(unique)} mined)")
        held = set(random.Random(seed).sample(unique, validation_queries))
    usable = [q for q, n in zip(qids, lengths) if q not in held and n >= negatives]
    short = sum(1 for q, n in zip(qids, lengths) if q not in held and n < negatives)
    return len(usable), held, short


def _validation_rows(triples: Path, held: set[str], negatives: int) -> dict | None:
    if not held:
        return None
    rows = [r for r in pq.read_table(triples, columns=["query_id", "query", "positive", "negatives"]).to_pylist()
            if r["query_id"] in held and len(r["negatives"]) >= negatives]
    out = {"query": [r["query"] for r in rows], "positive": [r["positive"] for r in rows]}
    for j in range(negatives):
        out[f"negative_{j}"] = [r["negatives"][j] for r in rows]
    return out


def train(spec: Spec, run: Run, base_model: str) -> dict:
    """Fine-tune `base_model` on the run's mined triples; save it in sentence-transformers format.

    Ray must be running. A re-run of the same run id resumes from the latest checkpoint
    (Ray Train restores it from the run's storage folder); worker failures resume in-run.
    """
    import ray
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = spec.train
    triples = run.path("mine", "triples.parquet")
    if not triples.exists():
        raise StageError(f"no mined triples at {triples}: run `vectune mine` (or `vectune run`) first")
    negatives = columns_for(t.loss, t.negatives if t.negatives is not None else spec.mine.num_negatives)
    rows, held, short = _plan_rows(triples, negatives, t.validation_queries, t.seed)
    per_worker = t.batch_size // t.workers
    if per_worker < 2:
        raise StageError(f"train.batch_size ({t.batch_size}) gives fewer than 2 rows per worker ({t.workers} workers)")
    steps_per_epoch = (rows // t.workers) // per_worker
    if steps_per_epoch < 1:
        raise StageError(f"{rows} usable training rows cannot fill one batch of {t.batch_size}")
    total_steps = max(1, math.ceil(steps_per_epoch * t.epochs))

    # materialised into the object store (not the driver) before training starts: Ray Data
    # excludes the training workers' CPUs from its budget, and a read still pending
    # behind them starves the workers
    ds = ray.data.read_parquet(str(triples), num_cpus=0.1).map_batches(
        _Expand(negatives, held), batch_format="numpy", num_cpus=0.1).materialize()
    threads = spec.runtime.torch_threads or max(1, int(math.ceil(t.cpus_per_worker)))
    config = {
        "model_path": base_model, "loss": t.loss, "negatives": negatives, "seed": t.seed,
        "learning_rate": t.learning_rate, "weight_decay": t.weight_decay, "warmup_ratio": t.warmup_ratio,
        "precision": t.precision, "max_seq_length": t.max_seq_length or spec.model.max_seq_length,
        "per_worker_batch": per_worker, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
        "checkpoint_every": t.checkpoint_every, "threads": threads, "shuffle_buffer": max(per_worker * 4, 256),
        "validation": _validation_rows(triples, held, negatives), "log_path": str(run.path("train", "loss.jsonl")),
        "world": t.workers,
    }
    if os.environ.get("VECTUNE_TEST_FAIL_AT_STEP"):  # fault injection for the resume tests only
        config.update(fail_at_step=int(os.environ["VECTUNE_TEST_FAIL_AT_STEP"]),
                      fail_marker=str(run.path("train", "injected-failure")))
    resources = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.gpus_per_worker else {})}
    score = {"checkpoint_score_attribute": "val_loss", "checkpoint_score_order": "min"} if held else {}
    with track("train", total_steps, unit="steps") as counter:
        config["progress"] = counter  # rank 0 ticks it after each step
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.gpus_per_worker > 0,
                                         resources_per_worker=resources),
            run_config=RunConfig(
                name="ray", storage_path=str(run.path("train")),
                failure_config=FailureConfig(max_failures=t.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints, **score),
            ),
            datasets={"train": ds},
        )
        log.info("training on %d rows (%d workers x %d per batch, %d steps, %d negatives)", rows, t.workers,
                 per_worker, total_steps, negatives)
        try:
            result = trainer.fit()
        except Exception as exc:  # Ray Train raises TrainingFailedError once max_failures is spent
            raise StageError(f"training failed (re-run the same run id to resume from the last checkpoint): "
                             f"{exc}") from None
    if result.error:
        raise StageError(f"training failed: {result.error}")
    chosen = result.checkpoint
    if held and result.best_checkpoints:
        chosen = min(result.best_checkpoints, key=lambda cm: cm[1].get("val_loss", math.inf))[0]
    out = run.path("model")
    if out.exists():
        shutil.rmtree(out)
    chosen.to_directory(str(out))
    (out / STATE_FILE).unlink(missing_ok=True)
    dim = _check_dimension(base_model, str(out))
    history = [json.loads(line) for line in run.path("train", "loss.jsonl").read_text().splitlines() if line]
    summary = {
        "model": str(out), "rows": rows, "rows_short_of_negatives": short, "validation_queries": len(held),
        "steps": total_steps, "steps_per_epoch": steps_per_epoch, "negatives": negatives, "dimension": dim,
        "final_loss": history[-1]["loss"] if history else None,
        "mean_step_seconds": float(np.mean([h["seconds"] for h in history])) if history else None,
    }
    write_card(out, spec, base_model, summary, metrics=None)
    return summary


def _check_dimension(base: str, tuned: str) -> int:
    from vectune.embed import load_model
    from vectune.embed.models import embedding_dimension

    b, t = embedding_dimension(load_model(base)), embedding_dimension(load_model(tuned))
    if b != t:
        raise ModelError(f"the tuned model outputs {t} dimensions, the base model {b}: vectors would not be comparable")
    return t


def write_card(folder: Path, spec: Spec, base_model: str, summary: dict, metrics: dict | None) -> None:
    """vectune's model card: base model, data, loss, hyperparameters, base vs tuned metrics."""
    card = {
        "base_model": spec.model.base, "base_model_path": base_model, "spec": spec.name, "spec_hash": spec.digest(),
        "data": {"corpus": spec.data.corpus.path, "train": spec.data.train.path if spec.data.train else None},
        "loss": spec.train.loss.model_dump(), "train": spec.train.model_dump(mode="json"),
        "mine": spec.mine.model_dump(mode="json"), "summary": summary, "metrics": metrics,
    }
    (folder / "vectune_card.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    lines = [
        f"# {spec.name}: {spec.model.base} fine-tuned by vectune", "",
        f"- base model: `{spec.model.base}`", f"- training labels: `{card['data']['train']}`",
        f"- loss: `{json.dumps(card['loss'])}`",
        f"- epochs {spec.train.epochs}, batch {spec.train.batch_size}, lr {spec.train.learning_rate}, "
        f"warm-up {spec.train.warmup_ratio}, weight decay {spec.train.weight_decay}, precision {spec.train.precision}",
        f"- steps {summary.get('steps')}, rows {summary.get('rows')}, dimension {summary.get('dimension')}", "",
    ]
    if metrics:
        names = sorted({m for v in metrics.values() for m in v})
        lines += ["| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for role, vals in metrics.items():
            lines.append(f"| {role} | " + " | ".join(f"{vals.get(n, float('nan')):.4f}" for n in names) + " |")
    (folder / "README.md").write_text("\n".join(lines) + "\n")
