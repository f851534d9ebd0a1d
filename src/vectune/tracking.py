"""Run tracking: `runtime.tracking: mlflow` logs each `vectune run` to an MLflow tracking URI.

What is logged is read from what the run wrote (its manifest, `metrics.json`, the training
curves and the tuned model folder), once the loop ends, so tracking never changes what a
stage does and a run that fails halfway is still logged with what it has:

- parameters: every spec setting, flattened (`train.learning_rate`), defaults included;
- metrics: each stage's seconds and numeric outputs (`stage.mine.rows`), base, tuned and
  BM25 scores per split (`tuned.test.ndcg_at_10`, `bm25.test.ndcg_at_10`), each model's gain
  over BM25 (`tuned.test.over_bm25.ndcg_at_10`), the training loss, learning rate and
  validation score per step, the gate's numbers (`gate.gain`, `gate.passed`);
- tags: the vectune run id, folder and spec hash, the `--set` overrides, the gate decision
  (`vectune.gate`: passed / failed) and its reasons;
- artifacts: the tuned model in sentence-transformers format under `model/` (load it with
  `SentenceTransformer(mlflow.artifacts.download_artifacts(...))`), and the manifest,
  metrics, mine audit and HTML report under `run/`.

Each `vectune run` invocation is one MLflow run (a resumed vectune run gets a new one, tagged
with the same `vectune.run_id`); the manifest lists them under `tracking`. The tracking URI
is `runtime.tracking_uri`, else MLFLOW_TRACKING_URI, else a local SQLite store beside the runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable

from vectune.errors import Problem, SpecError
from vectune.runs import Run
from vectune.spec import Spec

log = logging.getLogger("vectune")

_BATCH = 100  # MLflow takes at most 100 params (1000 metrics) per log_batch call
#: MLflow's rule for param and metric names; anything else becomes `_` (`ndcg@10` -> `ndcg_at_10`)
_NAME = re.compile(r"[^\w\-. :/]")


def enabled(spec: Spec) -> bool:
    return spec.runtime.tracking == "mlflow"


def check(spec: Spec) -> None:
    """Fail before any work when tracking is asked for and MLflow is not installed.

    Raises:
        SpecError: `runtime.tracking: mlflow` without the `tracking` extra (exit code 2).
    """
    if not enabled(spec):
        return
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise SpecError(str(spec.source or "<spec>"), [Problem(
            "runtime.tracking", "`mlflow` needs MLflow: pip install 'vectune[tracking]'")]) from None


def tracking_uri(spec: Spec) -> str:
    """`runtime.tracking_uri`, else MLFLOW_TRACKING_URI, else `sqlite:///<runs>/mlflow.db`."""
    uri = spec.runtime.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return "sqlite:///" + str(Path(spec.runs_root()) / "mlflow.db")


def log_run(spec: Spec, run: Run, *, status: str = "FINISHED") -> dict | None:
    """Log `run` to MLflow (a no-op unless `runtime.tracking: mlflow`).

    Args:
        status: the MLflow run status: FINISHED (the loop ended, the gate passed or refused
            the model) or FAILED (a stage raised).

    Returns:
        `{"backend", "uri", "experiment_id", "run_id"}`, also recorded in the manifest.
    """
    if not enabled(spec):
        return None
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from vectune.report.artifacts import RunArtifacts

    uri = tracking_uri(spec)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = _experiment(client, spec, uri)
    found = RunArtifacts.read(run.dir)
    manifest = found.manifest or run.manifest
    gate = manifest.get("gate")
    tags = {"vectune.run_id": run.id, "vectune.run_dir": str(run.dir), "vectune.spec_hash": spec.digest(),
            "vectune.spec_file": str(spec.source or ""), "vectune.overrides": json.dumps(spec.overrides)}
    if gate:
        tags["vectune.gate"] = "passed" if gate.get("passed") else "failed"
        tags["vectune.gate.reasons"] = "; ".join(gate.get("reasons") or []) or "-"
    mlrun = client.create_run(experiment_id, run_name=run.id, tags=tags)
    rid = mlrun.info.run_id
    try:
        params = [Param(k, v) for k, v in _flatten(_with_resolved_precision(spec.canonical(), manifest))]
        for chunk in _chunks(params, _BATCH):
            client.log_batch(rid, params=chunk)
        now = int(time.time() * 1000)
        metrics = [Metric(_name(k), float(v), now, step) for k, v, step in _metrics(manifest, found)]
        for chunk in _chunks(metrics, 1000):
            client.log_batch(rid, metrics=chunk)
        if gate:
            client.log_dict(rid, gate, "run/gate.json")
        for name in ("manifest.json", "metrics.json", "report.html", "mine/mine_audit.json"):
            if (run.dir / name).is_file():
                client.log_artifact(rid, str(run.dir / name), "run")
        model = (manifest.get("models") or {}).get("tuned", {}).get("path")
        if model and (Path(model) / "modules.json").is_file():
            client.log_artifacts(rid, model, "model")
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    client.set_terminated(rid, status)
    record = {"backend": "mlflow", "uri": uri, "experiment_id": experiment_id, "run_id": rid}
    runs = run.manifest.setdefault("tracking", [])
    runs.append(record)
    run.save()
    log.info("tracking: logged to MLflow run %s (experiment %s) at %s", rid, experiment_id, uri)
    return record


def _experiment(client, spec: Spec, uri: str) -> str:
    name = spec.runtime.tracking_experiment or spec.name
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///") and not spec.runtime.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        # the default local store keeps its artifacts beside it, not in the working folder
        location = (Path(spec.runs_root()) / "mlflow-artifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def _metrics(manifest: dict, found) -> Iterable[tuple[str, float, int]]:
    """(name, value, step) for everything numeric the run recorded."""
    for stage, info in (manifest.get("stages") or {}).items():
        key = "stage." + stage.replace(":", ".")
        if isinstance(info.get("seconds"), (int, float)):
            yield f"{key}.seconds", info["seconds"], 0
        for out, value in (info.get("outputs") or {}).items():
            if _numeric(value):  # an output's own `seconds` is not the stage's
                yield f"{key}.{'output_seconds' if out == 'seconds' else out}", value, 0
    scores = found.metrics or {}
    for role, by_split in scores.items():
        for split, summary in by_split.items():
            for metric, value in (summary.get("metrics") or {}).items():
                if _numeric(value):
                    yield f"{role}.{split}.{metric}", value, 0
            bm25 = (scores.get("bm25") or {}).get(split, {}).get("metrics") or {}
            if role != "bm25" and bm25:
                for metric, value in (summary.get("metrics") or {}).items():
                    if _numeric(value) and _numeric(bm25.get(metric)):
                        yield f"{role}.{split}.over_bm25.{metric}", value - bm25[metric], 0
    for row in found.loss or []:
        step = int(row.get("step", 0))
        for key, name in (("loss", "train.loss"), ("lr", "train.learning_rate"), ("grad_norm", "train.grad_norm")):
            if _numeric(row.get(key)):
                yield name, row[key], step
    for i, row in enumerate(found.validation or []):
        step = int(row.get("step", i))
        for metric, value in (row.get("metrics") or row).items():
            if metric != "step" and _numeric(value):
                yield f"train.validation.{metric}", value, step
    gate = manifest.get("gate") or {}
    for key in ("base", "tuned", "gain", "min_gain", "passed"):
        if _numeric(gate.get(key)):
            yield f"gate.{key}", gate[key], 0


def _with_resolved_precision(canonical: dict, manifest: dict) -> dict:
    """The spec's values with each precision as the run resolved it (`auto` is never a param:
    what ran is; the manifest's `precision` record says where it was decided and why)."""
    for field, choice in (manifest.get("precision") or {}).items():
        section, key = field.split(".", 1)
        if section in canonical and choice.get("resolved"):
            canonical[section][key] = choice["resolved"]
    return canonical


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


def _name(key: str) -> str:
    return _NAME.sub("_", key.replace("@", "_at_"))


def _flatten(mapping: dict, prefix: str = "") -> Iterable[tuple[str, str]]:
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _flatten(value, name + ".")
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            yield _name(name), text[:6000]  # MLflow's limit on a param value


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
