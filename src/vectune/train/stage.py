"""The train stage: mined triples -> a fine-tuned sentence-transformers model, on Ray Train.

Top to bottom: the plan (validation queries held
out, rows grouped by their number of hard negatives, steps from the budget); Ray Train
runs `SentenceTransformerTrainer` on every worker (`loop.py`); the best checkpoint on the
validation queries is mixed with the base model at the best weight (`validation.py`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vectune.errors import ModelError, StageError
from vectune.precision import resolved
from vectune.progress import track
from vectune.runs import Run
from vectune.spec import Spec
from vectune.train.loop import HF_CHECKPOINT, LoopConfig, score_key, train_loop
from vectune.train.losses import columns_for
from vectune.train.plan import plan, validation_set

log = logging.getLogger("vectune")


_COLUMNS = ["query_id", "query", "positive_id", "positive", "grade", "negative_ids", "negatives"]


def _choose_weight_task(**kwargs):
    from vectune.train.validation import choose_weight

    return choose_weight(**kwargs)


def _training_qrels(spec: Spec) -> dict[str, dict[str, int]] | None:
    """Every training label, for the validation qrels (None when the labels cannot be read
    here, e.g. triples copied in from elsewhere: then only the mined pairs count)."""
    from vectune.data import DomainData
    from vectune.errors import VectuneError

    try:
        return DomainData(spec).labels("train").qrels
    except (VectuneError, OSError) as exc:
        log.info("validation: training labels unavailable (%s); scoring against mined pairs only", exc)
        return None


def train(spec: Spec, run: Run, base_model: str, *, preflight: dict | None = None) -> dict:
    """Fine-tune `base_model` on the run's mined triples; save it in sentence-transformers format.

    Ray must be running. A re-run of the same run id resumes from the latest checkpoint
    (Ray Train restores it from the run's storage folder); worker failures resume in-run.
    With validation queries, the best checkpoint is kept and mixed with the base model at
    the weight that scores best on them (`train.interpolation`). `preflight` is the mine
    audit's verdict on these rows (`vectune.mine.preflight`), kept in the summary.
    """
    import ray
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    spec = resolved(spec)  # `auto` precision decided on a training worker (vectune.precision)
    t = spec.train
    triples = run.path("mine", "triples.parquet")
    if not triples.exists():
        raise StageError(f"no mined triples at {triples}: run `vectune mine` (or `vectune run`) first")
    table = pq.read_table(triples)
    if "grade" not in table.column_names:  # triples mined before graded labels
        table = table.append_column("grade", pa.array([1] * table.num_rows, pa.int32()))
    negatives = columns_for(t.loss, t.negatives if t.negatives is not None else spec.mine.num_negatives)
    counts = [len(x) for x in table.column("negative_ids").to_pylist()]
    p = plan(table.column("query_id").to_pylist(), counts, spec, negatives, exact_negatives=t.loss.type == "triplet")
    run.write_json("train/plan.json", {
        "held": sorted(p.held), "rows_by_negatives": {str(k): n for k, n in p.groups.items()},
        "rows_short_of_negatives": p.dropped_short, "micro_batch": p.micro_batch,
        "steps_per_epoch": p.steps_per_epoch, "total_steps": p.total_steps, "warmup_steps": p.warmup_steps,
        "checkpoint_every": p.checkpoint_every})
    m = spec.model
    vset = None
    if p.held:  # the rows as Python objects only when validation needs their texts
        vset = validation_set(table.select(_COLUMNS).to_pylist(), set(p.held), t.validation_docs, t.seed,
                              (m.query_prefix, m.document_prefix), labels=_training_qrels(spec))
    keep = sorted(p.group_of)
    train_table = table.select(["query", "positive", "negatives"]).take(pa.array(keep, pa.int64()))
    train_table = train_table.append_column("group", pa.array([p.group_of[i] for i in keep], pa.int32()))
    # in the object store, whole, on every worker: the trainer's own (no-duplicates, per
    # dataset) batch sampler orders the rows and accelerate splits each step across workers
    ds = ray.data.from_arrow(train_table)
    primary = spec.evaluate.gate.metric
    metrics = tuple(dict.fromkeys([primary, *spec.evaluate.metrics]))
    threads = spec.runtime.torch_threads or max(1, int(math.ceil(t.cpus_per_worker)))
    prompts = {}
    if m.query_prefix:
        prompts["anchor"] = m.query_prefix
    if m.document_prefix:
        prompts.update({"positive": m.document_prefix, **{f"negative_{j + 1}": m.document_prefix
                                                          for j in range(negatives)}})
    resources = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.gpus_per_worker else {})}
    score = {"checkpoint_score_attribute": score_key(primary), "checkpoint_score_order": "max"} if vset else {}
    run.path("train").mkdir(parents=True, exist_ok=True)
    with track("train", p.total_steps, unit="steps") as counter:
        config = LoopConfig(
            model_path=base_model, base_model_path=base_model, loss=t.loss, groups=tuple(p.groups),
            micro_batch=p.micro_batch, accumulation=t.gradient_accumulation, total_steps=p.total_steps,
            warmup_steps=p.warmup_steps, checkpoint_every=p.checkpoint_every, learning_rate=t.learning_rate,
            weight_decay=t.weight_decay, precision=t.precision, max_seq_length=t.max_seq_length or m.max_seq_length,
            seed=t.seed, threads=threads, prompts=prompts, validation=vset, metrics=metrics, primary=primary,
            log_path=str(run.path("train", "loss.jsonl")), progress=counter,
        )
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"config": config},
            scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.gpus_per_worker > 0,
                                         resources_per_worker=resources),
            run_config=RunConfig(
                name="ray", storage_path=str(run.path("train")),
                failure_config=FailureConfig(max_failures=t.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints, **score),
            ),
            datasets={"train": ds},
            dataset_config=DataConfig(datasets_to_split=[]),
        )
        log.info("training on %d rows in %s (%d workers x %d per batch x %d accumulation, %d steps, "
                 "%d negatives, %d validation queries)", p.rows, {f"{k} negatives": n for k, n in p.groups.items()},
                 t.workers, p.micro_batch, t.gradient_accumulation, p.total_steps, negatives, len(p.held))
        try:
            result = trainer.fit()
        except Exception as exc:  # Ray Train raises TrainingFailedError once max_failures is spent
            raise StageError(f"training failed (re-run the same run id to resume from the last checkpoint): "
                             f"{exc}") from None
    if result.error:
        raise StageError(f"training failed: {result.error}")
    if result.checkpoint is None:  # the trainer ran no step
        raise StageError(
            f"training ran no step: among {p.rows} rows the no-duplicates batch sampler found no batch of "
            f"{p.micro_batch} without a repeated query or document; lower train.batch_size or add labelled queries")
    chosen, chosen_metrics = result.checkpoint, result.metrics or {}
    if vset and result.best_checkpoints:
        chosen, chosen_metrics = max(result.best_checkpoints, key=lambda cm: cm[1].get(score_key(primary), -math.inf))
    picked = run.path("train", "chosen")
    if picked.exists():
        shutil.rmtree(picked)
    chosen.to_directory(str(picked))
    tuned = str(picked / HF_CHECKPOINT)
    out = run.path("model")
    if out.exists():
        shutil.rmtree(out)
    mix = None
    if vset and t.interpolation != [1.0]:
        known = {1.0: {k: chosen_metrics[f"eval_val_{k}"] for k in metrics if f"eval_val_{k}" in chosen_metrics}}
        task = ray.remote(_choose_weight_task).options(
            num_cpus=t.cpus_per_worker, num_gpus=t.gpus_per_worker or 0)
        scored = [w for w in t.interpolation if w not in known]
        texts = len(scored) * (len(vset["queries"]) + len(vset["corpus"]))
        with track(f"choose mixing weight ({len(scored)} weights)", texts, unit="texts") as counter:
            mix = ray.get(task.remote(base_path=base_model, tuned_path=tuned, out_path=str(out), vset=vset,
                                      weights=t.interpolation, metrics=metrics, primary=primary, known=known,
                                      threads=threads, max_seq_length=t.max_seq_length or m.max_seq_length,
                                      precision=t.precision, progress=counter))
        log.info("interpolation: weight %.2f of the tuned model scores best on the validation queries (%s)",
                 mix["weight"], ", ".join(f"{c['weight']:.2f}: {c[primary]:.4f}" for c in mix["curve"]))
    else:
        from sentence_transformers import SentenceTransformer

        SentenceTransformer(tuned, device="cpu").save(str(out))  # the model alone, no optimizer state
    dim = _check_dimension(base_model, str(out))
    history = [json.loads(line) for line in run.path("train", "loss.jsonl").read_text().splitlines() if line]
    seconds = [h["seconds"] for h in history if h.get("seconds") is not None]
    summary = {
        "model": str(out), "rows": p.rows, "rows_by_negatives": {str(k): n for k, n in p.groups.items()},
        "rows_without_negatives": p.rows_without_negatives, "rows_short_of_negatives": p.dropped_short,
        "validation_queries": len(p.held), "validation_docs": len(vset["corpus"]) if vset else 0,
        "steps": p.total_steps, "steps_per_epoch": p.steps_per_epoch, "budget_steps": t.max_steps,
        "warmup_steps": p.warmup_steps, "checkpoint_every": p.checkpoint_every, "negatives": negatives,
        "dimension": dim, "final_loss": history[-1]["loss"] if history else None,
        "mean_step_seconds": float(np.mean(seconds)) if seconds else None,
        "checkpoint": {"step": _step_of(picked), "validation": {k: chosen_metrics.get(f"eval_val_{k}")
                                                                  for k in metrics} if vset else None},
        "interpolation": mix, "preflight": preflight,
    }
    if mix:
        run.write_json("train/interpolation.json", mix)
    write_card(out, spec, base_model, summary, metrics=None)
    return summary


def _step_of(checkpoint_dir: Path) -> int | None:
    state = checkpoint_dir / HF_CHECKPOINT / "trainer_state.json"
    return json.loads(state.read_text()).get("global_step") if state.exists() else None


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
