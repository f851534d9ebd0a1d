"""Every entry point of vectune: what the CLI and the Ray job entrypoints delegate to.

Each opens (or resumes) a run, checks its inputs before Ray starts, starts or joins Ray,
and calls the stages in order. Stages never call back up here.

    mine, train, evaluate, run (the whole loop), reindex, rollback, tune
"""

from __future__ import annotations

import logging
from pathlib import Path

from vectune.data import DomainData
from vectune.embed import model_fingerprint, resolve_model
from vectune.evaluate import Evaluation, evaluate_model
from vectune.runs import Run, base_model_path, record_lineage
from vectune.runtime import ray_session
from vectune.spec import Spec

log = logging.getLogger("vectune")


def mine(spec: Spec, *, run_id: str | None = None, force: bool = False) -> dict:
    """`vectune mine`: check the labels (before Ray starts), open the run, mine.

    Returns:
        The audit, with `run_id` and `run_dir`.
    """
    from vectune.mine import mine as mine_stage, training_labels

    data = DomainData(spec)
    training_labels(spec, data)  # bad labels fail fast, without starting Ray
    run = Run.create(spec, run_id)
    record_lineage(run, data)
    with ray_session(spec.runtime):
        audit = mine_stage(spec, data, run, force=force)
    return {**audit, "run_id": run.id, "run_dir": str(run.dir)}


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


# -- the whole loop -------------------------------------------------------------------

STAGES = ("mine", "train", "evaluate", "gate", "reindex")


def _selected(from_stage: str | None, only: str | None) -> list[str]:
    from vectune.errors import SpecError
    from vectune.spec import Problem

    for name, value in (("--from", from_stage), ("--only", only)):
        if value is not None and value not in STAGES:
            raise SpecError(name, [Problem(name, f"unknown stage {value!r}; stages: {', '.join(STAGES)}")])
    if only:
        return [only]
    return list(STAGES[STAGES.index(from_stage):]) if from_stage else list(STAGES)


def train(spec: Spec, *, run_id: str | None = None) -> dict:
    """Train on the mined triples of `run_id` (default: the newest run whose mine stage finished)."""
    from vectune.errors import StageError

    run = Run.open(spec, run_id) if run_id else Run.latest(spec, with_stage="mine")
    if run is None:
        raise StageError(f"no run of {spec.name!r} has mined triples: run `vectune mine` first")
    with ray_session(spec.runtime):
        summary = _train_stage(spec, run, force=True)
    return {"run_id": run.id, "run_dir": str(run.dir), "train": summary}


def _train_stage(spec: Spec, run: Run, *, force: bool) -> dict:
    from vectune.train import train as train_model

    inputs = {"spec": spec.section_digest("data", "model", "mine", "train"),
              "triples": run.stage_info("mine").get("finished")}
    if not force and run.is_done("train", inputs) and run.path("model", "modules.json").exists():
        log.info("train: finished earlier with the same inputs, skipped")
        return run.stage_info("train").get("outputs", {})
    base = base_model_path(spec)
    verdict = _preflight(run)
    with run.stage("train", inputs) as outputs:
        summary = train_model(spec, run, base, preflight=verdict)
        outputs.update(summary)
    models = run.manifest.setdefault("models", {})
    models["tuned"] = {"path": summary["model"], "fingerprint": model_fingerprint(summary["model"])}
    run.save()
    return summary


def _preflight(run: Run) -> dict | None:
    """The mine audit's verdict on the rows about to train, logged before training starts:
    the share of queries with hard negatives, and the guard to blame when it is low."""
    from vectune.mine import AUDIT, preflight

    audit = run.read_json("/".join(AUDIT))
    if not audit:
        return None
    verdict = preflight(audit)
    (log.warning if verdict["low"] else log.info)("train pre-flight: %s", verdict["message"])
    return verdict


def _evaluate_stage(spec: Spec, run: Run, data: DomainData, *, force: bool) -> dict:
    """Base and tuned models on the eval split (the base one is cached across runs)."""
    split = spec.evaluate.split
    tuned = run.manifest.get("models", {}).get("tuned")
    if not tuned:
        from vectune.errors import StageError

        raise StageError("no tuned model in this run: the train stage must finish first")
    out = {}
    for role, path in (("base", base_model_path(spec)), ("tuned", tuned["path"])):
        inputs = {"spec": spec.section_digest("data", "model", "evaluate"), "model": model_fingerprint(path)}
        key = f"evaluate:{role}:{split}"
        saved = (run.read_json("metrics.json") or {}).get(role, {}).get(split)
        if not force and run.is_done(key, inputs) and saved:
            out[role] = saved
            continue
        with run.stage(key, inputs) as outputs:
            result = evaluate_model(spec, data, path, split)
            outputs.update(result.metrics)
        save_evaluation(run, role, result)
        out[role] = result.summary()
    return out


def _gate_stage(spec: Spec, run: Run, evaluations: dict) -> dict:
    from vectune.evaluate.gate import decide
    from vectune.train import write_card

    decision = decide(spec.evaluate.gate, evaluations["base"]["metrics"], evaluations["tuned"]["metrics"])
    with run.stage("gate", {"metrics": evaluations}) as outputs:
        outputs.update(decision.to_dict())
    record = {**decision.to_dict(), "split": spec.evaluate.split}
    run.record("gate", record)
    tuned = run.manifest["models"]["tuned"]["path"]
    summary = run.stage_info("train").get("outputs", {})
    write_card(Path(tuned), spec, base_model_path(spec), summary,
               metrics={r: evaluations[r]["metrics"] for r in ("base", "tuned")})
    return record


def run(spec: Spec, *, run_id: str | None = None, from_stage: str | None = None, only: str | None = None
        ) -> dict:
    """validate -> mine -> train -> evaluate -> gate -> re-index.

    Re-running a run id skips stages that finished with the same inputs; `from_stage`
    re-runs from that stage on, `only` runs one stage. A failed gate raises GateFailed
    (exit code 3) before anything touches the index.
    """
    from vectune.errors import GateFailed

    stages = _selected(from_stage, only)
    forced = set(stages) if (from_stage or only) else set()
    data = DomainData(spec)
    data.labels("train")
    data.labels(spec.evaluate.split)  # bad labels fail before any work
    run = Run.create(spec, run_id)
    record_lineage(run, data)
    result: dict = {"run_id": run.id, "run_dir": str(run.dir)}
    with ray_session(spec.runtime):
        if "mine" in stages:
            from vectune.mine import mine as mine_stage

            result["mine"] = mine_stage(spec, data, run, force="mine" in forced)
        if "train" in stages:
            result["train"] = _train_stage(spec, run, force="train" in forced)
        evaluations = None
        if "evaluate" in stages:
            evaluations = _evaluate_stage(spec, run, data, force="evaluate" in forced)
            result["evaluate"] = evaluations
        if "gate" in stages:
            if evaluations is None:
                evaluations = _evaluate_stage(spec, run, data, force=False)
            result["gate"] = _gate_stage(spec, run, evaluations)
            if not result["gate"]["passed"]:
                run.write_json("result.json", result)
                _write_report(run)  # a refused model is when the report matters most
                raise GateFailed("gate failed, nothing re-indexed: " + "; ".join(result["gate"]["reasons"])
                                 + f" (run {run.id})")
        if "reindex" in stages:
            gate = run.manifest.get("gate")
            if not gate or not gate.get("passed"):
                raise GateFailed(f"run {run.id} has no passed gate: refusing to re-index with its model")
            from vectune.index import reindex as reindex_stage

            # a newly promoted model: always a new collection, never a sync of the old one
            result["reindex"] = reindex_stage(spec, run, run.manifest["models"]["tuned"]["path"], full=True)
    run.write_json("result.json", result)
    _write_report(run)
    return result


def _write_report(run: Run) -> None:
    """`<run_dir>/report.html`; a report that fails to render never fails the run."""
    try:
        from vectune.report import write_report

        log.info("report: %s", write_report(run.dir))
    except Exception as exc:  # noqa: BLE001 - the run's results are already saved
        log.warning("could not write the run report: %s: %s", type(exc).__name__, exc)


def reindex(spec: Spec, *, model: str | None = None, run_id: str | None = None, full: bool = False) -> dict:
    """`vectune reindex`: sync the live collection in place with the corpus when its stamp
    matches the model and settings, else (or with `full`) re-embed the corpus into a new
    collection, verify it, swap the alias.

    The model is `model`, else the one a resumed run was using, else the newest tuned model
    of this spec whose run passed the gate, else the base model.
    """
    from vectune.index import promoted_model, reindex as reindex_stage

    run = Run.create(spec, run_id)
    previous = (run.manifest.get("collection") or {}).get("model") or {}
    if model:
        path, source = resolve_model(model, Path.cwd()), "--model"
    elif previous.get("path") and run.stage_info("reindex").get("status") in ("running", "failed"):
        path, source = previous["path"], f"resuming run {run.id}"
    else:
        path, source = promoted_model(spec)
    log.info("re-indexing %s with %s", spec.name, source)
    result = reindex_stage(spec, run, path, full=full)
    return {**result, "model_source": source, "run_dir": str(run.dir)}


def rollback(spec: Spec, *, to: str | None = None) -> dict:
    """`vectune rollback`: move the alias back to the previous verified collection (or `to`)."""
    from vectune.index import collections, connect

    client = connect(spec)
    try:
        return collections.rollback(client, spec, to)
    finally:
        client.close()


def tune(spec: Spec, *, run_id: str | None = None) -> dict:
    """`vectune tune`: carve validation queries out of the training labels, mine once, run
    the trials with Ray Tune, write the best values as `<spec>.tuned.yaml`."""
    from vectune.runs import new_run_id
    from vectune.tune import tuner
    from vectune.tune.space import renamed
    from vectune.tune.validate import carve

    tuner.check(spec)
    t = spec.tune
    data = DomainData(spec)
    validation, rest = carve(data.labels("train"), t.validation_queries, t.seed)
    if t.train_queries is not None and t.train_queries < len(rest.qrels):
        rest, _ = carve(rest, t.train_queries, t.seed + 1)  # the per-trial budget
    tspec = tuner.pinned_runs(renamed(spec, (spec.name + "-tune")[:63]))
    run = Run.create(tspec, run_id or new_run_id())
    record_lineage(run, data)
    with ray_session(spec.runtime):
        return tuner.search(spec, tspec, run, validation, rest, base_model_path(spec))
