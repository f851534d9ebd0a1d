"""The stages as library calls: what the CLI and the Ray job entrypoints delegate to."""

from __future__ import annotations

import logging
from pathlib import Path

from vectune.cluster import ray_session
from vectune.data import DomainData
from vectune.embed import model_fingerprint, resolve_model
from vectune.evaluate import Evaluation, evaluate_model
from vectune.runs import Run
from vectune.spec import Spec

log = logging.getLogger("vectune")


def base_model_path(spec: Spec) -> str:
    return resolve_model(spec.model.base, spec.base_dir)


def record_lineage(run: Run, data: DomainData) -> None:
    """Data file hashes and the base model's fingerprint, once per run."""
    if not run.manifest.get("data"):
        run.record("data", data.file_hashes())
    models = run.manifest.setdefault("models", {})
    if "base" not in models:
        path = base_model_path(run.spec)
        models["base"] = {"name": run.spec.model.base, "path": path, "fingerprint": model_fingerprint(path)}
        run.save()


def evaluate(spec: Spec, *, model: str | None = None, split: str | None = None, run_id: str | None = None) -> dict:
    """Score a model (the spec's base model by default) on a held-out split.

    Writes `metrics.json` and `per_query/<role>-<split>.json` into the run folder.
    """
    split = split or spec.evaluate.split
    data = DomainData(spec)
    data.labels(split)  # bad labels fail before Ray starts
    path = resolve_model(model, Path.cwd()) if model else base_model_path(spec)
    role = "model" if model else "base"
    run = Run.create(spec, run_id)
    record_lineage(run, data)
    with ray_session(spec.runtime), run.stage(f"evaluate:{role}:{split}") as outputs:
        result = evaluate_model(spec, data, path, split)
        outputs.update(result.metrics)
    save_evaluation(run, role, result)
    return {"run_id": run.id, "run_dir": str(run.dir), role: result.summary()}


def save_evaluation(run: Run, role: str, result: Evaluation) -> None:
    metrics = run.read_json("metrics.json") or {}
    metrics.setdefault(role, {})[result.split] = result.summary()
    run.write_json("metrics.json", metrics)
    run.write_json(f"per_query/{role}-{result.split}.json", result.per_query)
