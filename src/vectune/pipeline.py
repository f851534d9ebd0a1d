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
from vectune.embed.models import check_sequence_lengths
from vectune.evaluate import Evaluation, gains_over
from vectune.evaluate.scores import scored
from vectune.runs import Run, base_model_path, record_lineage
from vectune.runtime import ray_session
from vectune.spec import Spec
from vectune.stages import STAGES

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
        spec = resolve_precision(spec, run)
        audit = mine_stage(spec, data, run, force=force)
    return {**audit, "run_id": run.id, "run_dir": str(run.dir)}


def evaluate(spec: Spec, *, model: str | None = None, split: str | None = None, run_id: str | None = None,
             live: bool = False) -> dict:
    """Score a model (the spec's base model by default) on a held-out split, ranked exactly in
    every mode; with `live`, the collection behind the alias instead, as it is served (its
    stamped model; hybrid where it holds BM25 vectors and the spec serves hybrid) through
    Qdrant's Query API.

    Writes `metrics.json` and `per_query/<role>-<split>.json` into the run folder. BM25 is
    scored beside it (`bm25`), with the model's gain over it (`over_bm25`).
    """
    from vectune.errors import IndexingError, SpecError
    from vectune.spec import Problem

    if live and model:
        raise SpecError("--live", [Problem("--live", "scores the model stamped on the live collection: leave out "
                                                     "--model")])
    split = split or spec.evaluate.split
    data = DomainData(spec)
    data.labels(split)  # bad labels fail before Ray starts
    served = None
    if live:
        from vectune.index import serving_model

        served = serving_model(spec)
        if served is None:
            raise IndexingError(f"the alias of {spec.name} serves no collection yet: nothing live to evaluate "
                                "(run `vectune reindex` or `vectune run` first)")
        path, role = served["path"], "live"
    else:
        path = _named_model(spec, model) if model else base_model_path(spec)
        role = "model" if model else "base"
    run = Run.create(spec, run_id)
    record_lineage(run, data)
    with ray_session(spec.runtime):
        spec = resolve_precision(spec, run)
        with run.stage(f"evaluate:{role}:{split}") as outputs:
            if served is not None:
                mode = spec.search.mode if served["sparse"] else "dense"
                from vectune.index.scoring import LIVE

                result, cached = _scored_through_index(spec, run, data, split, role, path, mode, LIVE,
                                                       collection=served["collection"])
                outputs.update(collection=served["collection"])
            else:
                result, cached = scored(spec, data, path, split)  # every mode, kept across runs
            outputs.update(result.metrics, cached=cached, mode=result.mode)
        bm25 = _bm25_stage(spec, run, data, split)
    save_evaluation(run, role, result)
    return {"run_id": run.id, "run_dir": str(run.dir), role: result.summary(), "bm25": bm25,
            "over_bm25": gains_over({role: result.summary()}, bm25)}


def validate(spec: Spec, *, data: bool = True) -> dict:
    """`vectune validate`: the spec (valid once loaded) and, unless `data` is False, what it
    names: each data file present, readable and in its format (first records), and the base
    model found offline, its limits read from its config. Fast: no Ray, no model loaded."""
    from vectune.precision import local_choices

    out: dict = {"valid": True, "name": spec.name, "hash": spec.digest()}
    choices = local_choices(spec)
    out["precision"] = {field: c.resolved for field, c in choices.items()}
    for warning in filter(None, (c.warning() for c in choices.values())):
        log.warning(warning)
    if data:
        from vectune.embed.models import model_limits
        from vectune.runs import runs_folder

        out["runs"] = str(runs_folder(spec))
        out["files"] = DomainData(spec).check_files()
        path = base_model_path(spec)
        out["model"] = {"name": spec.model.base, "path": path, **model_limits(path)}
    return out


def resolve_precision(spec: Spec, run: Run | None, *, train: bool = True) -> Spec:
    """The spec with `auto` precisions resolved where the stages run (`vectune.precision`),
    recorded in the run's manifest (`precision`: requested, resolved, device, CPU kind, why).
    Every stage is handed the resolved spec, so only resolved values reach cache keys,
    collection stamps, score digests and stage inputs."""
    from vectune.precision import resolve_spec

    spec, choices = resolve_spec(spec, train=train)
    for choice in choices.values():
        log.info("precision: %s %s -> %s (%s)", choice.field, choice.requested, choice.resolved, choice.reason)
    if run is not None:
        run.record("precision", {**(run.manifest.get("precision") or {}),
                                 **{field: c.to_dict() for field, c in choices.items()}})
    return spec


def _named_model(spec: Spec, name: str) -> str:
    """A `--model` folder or name, resolved and checked against the spec's sequence length."""
    path = resolve_model(name, Path.cwd())
    check_sequence_lengths(path, {"model.max_seq_length": spec.model.max_seq_length})
    return path


def save_evaluation(run: Run, role: str, result: Evaluation) -> None:
    metrics = run.read_json("metrics.json") or {}
    metrics.setdefault(role, {})[result.split] = result.summary()
    run.write_json("metrics.json", metrics)
    run.write_json(f"per_query/{role}-{result.split}.json", result.per_query)


# -- the whole loop -------------------------------------------------------------------

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
        spec = resolve_precision(spec, run)
        summary = _train_stage(spec, run, force=True)
    return {"run_id": run.id, "run_dir": str(run.dir), "train": summary}


def _train_stage(spec: Spec, run: Run, *, force: bool) -> dict:
    from vectune.train import train as train_model

    inputs = {"spec": spec.section_digest("data", "model", "mine", "train"),
              "triples": run.stage_info("mine").get("finished")}
    if not force and run.is_done("train", inputs) and run.path("model", "modules.json").exists():
        log.info("train: finished earlier with the same inputs, skipped")
        return run.stage_info("train").get("outputs", {})
    start = base_model_path(spec)
    models = run.manifest.setdefault("models", {})
    if spec.train.init == "live":  # warm start: continue from the model serving now
        champion = _champion(spec, run, against="live")
        start = champion["path"]
        models["init"] = {"from": champion["against"], "path": start, "fingerprint": champion["fingerprint"],
                          "label": champion["label"], **({"fallback": champion["fallback"]} if "fallback" in champion
                                                         else {})}
        run.save()
        log.info("train: warm start from %s", champion["label"])
        inputs["init"] = model_fingerprint(start)
    if not force and run.is_done("train", inputs) and run.path("model", "modules.json").exists():
        log.info("train: finished earlier with the same inputs, skipped")
        return run.stage_info("train").get("outputs", {})
    verdict = _preflight(run)
    with run.stage("train", inputs) as outputs:
        summary = train_model(spec, run, start, preflight=verdict)
        outputs.update(summary)
    models["tuned"] = {"path": summary["model"], "fingerprint": model_fingerprint(summary["model"])}
    run.save()
    return summary


def runs(spec: Spec) -> dict:
    """`vectune runs`: every run of the spec, oldest first: stages done, the tuned model's
    metrics, the gate's decision and against what, its collection, and which is live."""
    live = None
    try:
        from vectune.index import serving_model

        serving = serving_model(spec)
        live = serving["collection"] if serving else None
    except Exception as exc:  # noqa: BLE001 - the listing still helps without Qdrant
        log.warning("runs: cannot tell the live collection (%s)", exc)
    rows = []
    for r in Run.all(spec):
        m = r.manifest
        stages = m.get("stages", {})
        gate = m.get("gate") or {}
        collection = (m.get("collection") or {}).get("name")
        metrics = ((r.read_json("metrics.json") or {}).get("tuned") or {}).get(spec.evaluate.split, {}).get("metrics")
        rows.append({
            "run_id": r.id, "started": m.get("created"),
            "stages": [s for s, info in stages.items() if info.get("status") == "done"],
            "failed": [s for s, info in stages.items() if info.get("status") == "failed"],
            "metrics": metrics or {},
            "gate": ({"passed": gate.get("passed"), "against": (gate.get("champion_model") or {}).get("label")
                      or gate.get("against"), "gain": gate.get("gain"), "p_value": gate.get("p_value"),
                      "ci95": gate.get("ci95")} if gate else None),
            "collection": collection, "live": bool(collection) and collection == live,
            "precision": {field: c.get("resolved") for field, c in (m.get("precision") or {}).items()},
        })
    return {"spec": spec.name, "live": live, "runs": rows}


def _held_out(spec: Spec, data: DomainData) -> None:
    """The gate's split must be held out: no query of it among the training queries, by id
    or by text (lower-cased, whitespace collapsed). `evaluate.overlap` says what to do with
    those that are: refuse (`error`), leave them out of training (`drop`), or `allow` them."""
    from vectune.errors import Problem, SpecError

    train, split = data.labels("train"), data.labels(spec.evaluate.split)
    if spec.evaluate.overlap == "allow":
        return

    def norm(text: str) -> str:
        return " ".join(text.lower().split())

    texts = {norm(text): qid for qid, text in train.queries.items()}
    by_id = sorted(set(split.qrels) & set(train.qrels))
    by_text = sorted(q for q in split.qrels if q not in train.qrels and norm(split.queries[q]) in texts)
    if not by_id and not by_text:
        return
    shown = [f"{q!r}" for q in by_id[:3]] + [f"{q!r} (text of training query {texts[norm(split.queries[q])]!r})"
                                             for q in by_text[:3 - min(3, len(by_id))]]
    if spec.evaluate.overlap == "drop":
        dropped = set(by_id) | {texts[norm(split.queries[q])] for q in by_text}
        for qid in dropped:
            train.qrels.pop(qid, None)
            train.queries.pop(qid, None)
        train.dropped["held_out_overlap"] = len(dropped)
        log.warning("%d training queries are also queries of split %r (%d by id, %d by identical text; e.g. %s): "
                    "left out of training (evaluate.overlap: drop)", len(dropped), spec.evaluate.split, len(by_id),
                    len(by_text), ", ".join(shown))
        return
    raise SpecError(str(spec.source or "<spec>"), [Problem(
        "evaluate.split",
        f"{len(by_id) + len(by_text)} of the {len(split.qrels)} queries of split {spec.evaluate.split!r} are training "
        f"queries too ({len(by_id)} by id, {len(by_text)} by identical text; e.g. {', '.join(shown)}): the gate would "
        "score memory, not generalisation. Hold them out of data.train, set evaluate.overlap: drop to leave them out "
        "of training, or evaluate.overlap: allow if this is intended")])


def _champion(spec: Spec, run: Run, *, against: str | None = None) -> dict:
    """The model a challenger of this run must beat, chosen once and kept in the manifest
    (`champion`): the one stamped on the collection behind the alias (`live`), else the base
    model, with the reason when the live one could not be used (nothing live, its folder gone)."""
    against = against or spec.evaluate.gate.against
    key = f"champion_{against}"
    if key in run.manifest:
        return run.manifest[key]
    base = base_model_path(spec)
    out = {"against": "base", "path": base, "fingerprint": model_fingerprint(base),
           "label": f"base model {spec.model.base}"}
    if against == "live":
        from vectune.index import serving_model

        live = serving_model(spec)
        if live is None:
            out["fallback"] = "nothing is live behind the alias yet: the base model is the champion"
        elif not live["path"] or not Path(live["path"]).is_dir():
            out["fallback"] = (f"the live model {live['path']} (collection {live['collection']}) is gone from this "
                               "machine: the base model is the champion instead")
            log.warning("gate: %s", out["fallback"])
        else:
            out = {"against": "live", "path": live["path"], "fingerprint": model_fingerprint(live["path"]),
                   "label": f"live model of {live['collection']}" + (f" (run {live['run_id']})" if live["run_id"] else ""),
                   "collection": live["collection"], "run_id": live["run_id"],
                   # as it is served now: hybrid only where its collection holds the BM25 vectors
                   "mode": spec.search.mode if live.get("sparse") else "dense"}
    out.setdefault("mode", spec.search.mode)  # the base model, as the spec would serve it
    run.record(key, out)
    return out


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
    """The base, the champion (when it is not the base) and the tuned model on the eval split.
    Models other than this run's tuned one are scored once across runs (evaluate/scores.py)."""
    from vectune.evaluate.scores import scores_digest

    split = spec.evaluate.split
    tuned = run.manifest.get("models", {}).get("tuned")
    if not tuned:
        from vectune.errors import StageError

        raise StageError("no tuned model in this run: the train stage must finish first")
    champion = _champion(spec, run)
    run.write_json(f"per_query/queries-{split}.json", data.labels(split).queries)  # the report shows texts
    models = [("base", base_model_path(spec)), ("tuned", tuned["path"])]
    if champion["against"] == "live" and champion["fingerprint"] != model_fingerprint(models[0][1]):
        models.insert(1, ("champion", champion["path"]))
    through = spec.evaluate.through
    out = {}
    for role, path in models:
        # each model in the mode it is (or would be) served: the champion as served now (a
        # live collection without sparse vectors is dense-only), the others as the spec serves
        mode = champion.get("mode", "dense") if role == "champion" else spec.search.mode
        inputs = {"spec": scores_digest(spec), "model": model_fingerprint(path), "mode": mode, "through": through}
        if through == "index" and role == "champion":
            inputs["collection"] = champion.get("collection")
        key = f"evaluate:{role}:{split}"
        saved = (run.read_json("metrics.json") or {}).get(role, {}).get(split)
        if not force and run.is_done(key, inputs) and saved and run.path("per_query", f"{role}-{split}.json").exists():
            out[role] = saved
            continue
        with run.stage(key, inputs) as outputs:
            if through == "index":
                from vectune.index.scoring import CANDIDATE, LIVE, SCORING

                kind = {"tuned": CANDIDATE, "champion": LIVE}.get(role, SCORING)
                result, cached = _scored_through_index(spec, run, data, split, role, path, mode, kind,
                                                       collection=champion.get("collection"))
                outputs.update(collection=result.collection)
            else:
                result, cached = scored(spec, data, path, split)
                result = result.in_mode(mode)
            outputs.update(result.metrics, cached=cached, mode=mode)
        save_evaluation(run, role, result)
        out[role] = result.summary()
    out["bm25"] = _bm25_stage(spec, run, data, split, force=force)
    out["over_bm25"] = gains_over({r: out[r] for r, _ in models}, out["bm25"])
    return out


def _scored_through_index(spec: Spec, run: Run, data: DomainData, split: str, role: str, path: str, mode: str,
                          kind: str, *, collection: str | None = None) -> tuple[Evaluation, bool]:
    """(`role`'s evaluation through the collection that serves or would serve it, whether that
    collection was already built). `kind` (`vectune.index.scoring`): `candidate`, the run's new
    version, built now and left unserved for the gate; `live`, the live `collection` as served;
    `scoring`, a scoring collection kept across runs (the base)."""
    import time

    from vectune.evaluate.stage import scored_runs
    from vectune.index.scoring import CANDIDATE, LIVE, Scorable, rank_through_index

    start = time.perf_counter()
    model = Scorable(role, path, mode, kind, collection=collection if kind == LIVE else None)
    labels = data.labels(split)
    qids = sorted(labels.qrels)
    ranked = rank_through_index(spec, data, run.id, [model], qids, [labels.queries[q] for q in qids],
                                spec.evaluate.depth)[role]
    if kind == CANDIDATE:
        run.record("candidate", {"name": ranked["collection"], "state": CANDIDATE, "model": path,
                                 "seconds": ranked["built"]})
    result = scored_runs(spec, data, path, split, {mode: ranked["run"]}, served=mode, start=start, through="index",
                         collection=ranked["collection"])
    return result, ranked["built"] == 0


def _bm25_stage(spec: Spec, run: Run, data: DomainData, split: str, *, force: bool = False) -> dict:
    """BM25 (Qdrant's, `vectune.evaluate.bm25`) on `split`: reported beside the models, never
    gated on; its scores are cached across runs like the champion's."""
    from vectune.evaluate.scores import bm25_digest, bm25_scored

    key, inputs = f"evaluate:bm25:{split}", {"bm25": bm25_digest(spec, data)}
    saved = (run.read_json("metrics.json") or {}).get("bm25", {}).get(split)
    if not force and run.is_done(key, inputs) and saved and run.path("per_query", f"bm25-{split}.json").exists():
        return saved
    with run.stage(key, inputs) as outputs:
        result, cached = bm25_scored(spec, data, split)
        outputs.update(result.metrics, cached=cached)
    save_evaluation(run, "bm25", result)
    return result.summary()


def _gate_stage(spec: Spec, run: Run, evaluations: dict) -> dict:
    from vectune.evaluate.gate import decide
    from vectune.train import write_card

    split = spec.evaluate.split
    champion = _champion(spec, run)
    role = "champion" if "champion" in evaluations else "base"
    per_query = {r: run.read_json(f"per_query/{r}-{split}.json") for r in (role, "tuned")}
    decision = decide(spec.evaluate.gate, evaluations["base"]["metrics"], evaluations["tuned"]["metrics"],
                      champion=evaluations[role]["metrics"], champion_per_query=per_query[role],
                      tuned_per_query=per_query["tuned"], against=champion["against"],
                      champion_model={k: champion[k] for k in ("label", "path", "fingerprint", "fallback",
                                                               "collection", "run_id") if k in champion})
    log.info("gate: %s", decision.summary())
    with run.stage("gate", {"metrics": evaluations}) as outputs:
        outputs.update(decision.to_dict())
    record = {**decision.to_dict(), "split": spec.evaluate.split, "summary": decision.summary()}
    summary = run.stage_info("train").get("outputs", {})
    record["validation_vs_test"] = _validation_vs_test(summary, evaluations, spec.evaluate.gate.metric, split)
    # what was compared: each side in the mode it is (the champion) or would be (the tuned) served
    record["served"] = {role: evaluations[role].get("mode", "dense"), "tuned": evaluations["tuned"].get("mode", "dense")}
    # and how: exactly, or through the collections that serve (would serve) them (`evaluate.through`)
    record["through"] = {r: {"through": evaluations[r].get("through", "exact"), "collection": evaluations[r].get("collection")}
                         for r in (role, "tuned")}
    run.record("gate", record)
    tuned = run.manifest["models"]["tuned"]["path"]
    write_card(Path(tuned), spec, base_model_path(spec), summary,
               metrics={r: evaluations[r]["metrics"] for r in ("base", "tuned")})
    return record


def _validation_vs_test(train: dict, evaluations: dict, metric: str, split: str) -> dict | None:
    """The base and the kept model on the validation queries beside the same models on the
    gate's split: choices made on validation carry over only if the two agree."""
    val = train.get("validation") or {}
    if not val.get("base"):
        return None
    out = {"metric": metric, "validation_queries": val.get("queries"), "validation_docs": val.get("docs"),
           "sampled": val.get("sampled"), "split": split,
           "base": {"validation": val["base"].get(metric), "test": evaluations["base"]["metrics"].get(metric)},
           "tuned": {"validation": (val.get("kept") or {}).get(metric),
                     "test": evaluations["tuned"]["metrics"].get(metric)}}
    log.info("validation vs %s (%s): base %.4f vs %.4f, tuned %.4f vs %.4f (%s validation queries over %s documents)",
             split, metric, out["base"]["validation"], out["base"]["test"], out["tuned"]["validation"] or float("nan"),
             out["tuned"]["test"], out["validation_queries"], out["validation_docs"])
    return out


def run(spec: Spec, *, run_id: str | None = None, from_stage: str | None = None, only: str | None = None,
        wait: float = 0.0) -> dict:
    """validate -> mine -> train -> evaluate -> gate -> re-index.

    Re-running a run id skips stages that finished with the same inputs; `from_stage`
    re-runs from that stage on, `only` runs one stage. A failed gate raises GateFailed
    (exit code 3) before anything touches the index. From the evaluation on (the champion is
    chosen there) the run holds the alias's lease (`vectune.lease`; `wait`: seconds to wait
    for another writer to finish). With `runtime.tracking: mlflow` the run is logged to
    MLflow once it ends, however it ends (`vectune.tracking`).
    """
    from vectune import tracking
    from vectune.errors import GateFailed

    stages = _selected(from_stage, only)
    forced = set(stages) if (from_stage or only) else set()
    tracking.check(spec)
    data = DomainData(spec)
    _held_out(spec, data)  # bad labels, and a gate split that overlaps training, fail before any work
    run = Run.create(spec, run_id)
    record_lineage(run, data)
    try:
        result = _run_stages(spec, run, data, stages, forced, wait=wait)
    except GateFailed:
        _track(spec, run, "FINISHED")  # the loop worked; the gate's refusal is a result
        raise
    except BaseException:
        _track(spec, run, "FAILED")
        raise
    tracked = _track(spec, run, "FINISHED")
    if tracked:
        result["tracking"] = tracked
    return result


def _track(spec: Spec, run: Run, status: str) -> dict | None:
    """Log the run to the tracking backend; a tracking failure never hides the run's own outcome."""
    from vectune import tracking

    try:
        return tracking.log_run(spec, run, status=status)
    except Exception as exc:  # noqa: BLE001 - the run's results are saved in its folder either way
        log.warning("tracking: could not log run %s: %s: %s", run.id, type(exc).__name__, exc)
        return None


def _run_stages(spec: Spec, run: Run, data: DomainData, stages: list[str], forced: set[str], *,
                wait: float = 0.0) -> dict:
    from contextlib import ExitStack

    from vectune.errors import GateFailed
    from vectune.lease import alias_lease

    result: dict = {"run_id": run.id, "run_dir": str(run.dir)}
    with ray_session(spec.runtime), ExitStack() as held:
        spec = resolve_precision(spec, run)
        _announce(spec, run, data, stages)
        if "mine" in stages:
            from vectune.mine import mine as mine_stage

            result["mine"] = mine_stage(spec, data, run, force="mine" in forced)
        if "train" in stages:
            result["train"] = _train_stage(spec, run, force="train" in forced)
            _stop_unless_better(run, result)
        spec = _int8_or_fp32(spec, run)
        if {"evaluate", "gate", "reindex"} & set(stages):
            result["lease"] = held.enter_context(alias_lease(spec, run.id, wait=wait))
        evaluations = None
        if "evaluate" in stages:
            evaluations = _evaluate_stage(spec, run, data, force="evaluate" in forced)
            result["evaluate"] = evaluations
        if "gate" in stages:
            if evaluations is None:
                evaluations = _evaluate_stage(spec, run, data, force=False)
            result["gate"] = _gate_stage(spec, run, evaluations)
            if not result["gate"]["passed"]:
                if spec.evaluate.through == "index":
                    from vectune.index.scoring import drop_candidate

                    result["gate"]["dropped"] = drop_candidate(spec, run.id)  # never served: nothing to keep
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


def _int8_or_fp32(spec: Spec, run: Run) -> Spec:
    """The spec the stages after training use: in fp32 when the train stage measured the tuned
    model's int8 variant more than `model.int8_tolerance` below fp32 on the validation queries
    (recorded under `precision`, with why, through the one resolver)."""
    from vectune.embed.int8_check import Int8Verdict
    from vectune.precision import int8_fallback

    checked = (run.stage_info("train").get("outputs") or {}).get("int8")
    if spec.model.precision != "int8" or not checked:
        return spec
    fields = Int8Verdict.__dataclass_fields__
    spec, choice = int8_fallback(spec, Int8Verdict(**{k: v for k, v in checked.items() if k in fields}))
    if choice is not None:
        log.warning("precision: model.precision int8 -> fp32 for the tuned model (%s)", choice.reason)
        run.record("precision", {**(run.manifest.get("precision") or {}), choice.field: choice.to_dict()})
    return spec


def _stop_unless_better(run: Run, result: dict) -> None:
    """Stop before the gate (exit 3, nothing re-indexed) when training kept no model that
    beats the starting one on the validation queries: there is nothing to challenge with."""
    from vectune.errors import GateFailed

    val = (result["train"] or {}).get("validation") or {}
    if val.get("beats_base") is not False:
        return
    primary = (run.read_json("train/settings.json") or {}).get("primary", "ndcg@10")
    reason = (f"training: no learning rate, checkpoint or mixing weight beat the starting model on the "
              f"{val.get('queries')} validation queries ({primary} {val['base'][primary]:.4f}, best tuned "
              f"{val['kept'][primary]:.4f})")
    run.record("gate", {"passed": False, "reasons": [reason], "stage": "train", "summary": reason})
    run.write_json("result.json", result)
    _write_report(run)
    raise GateFailed(f"{reason}: nothing evaluated or re-indexed (run {run.id})")


def _announce(spec: Spec, run: Run, data: DomainData, stages: list[str]) -> None:
    """Log the run's plan: each stage's size and estimated time here (`vectune.forecast`)."""
    from vectune.forecast import describe, forecast

    if not {"mine", "train", "evaluate"} & set(stages):
        return
    plan = forecast(spec, data, stages, base_model_path(spec))
    for line in describe(plan):
        log.info(line)
    run.record("plan", {k: v for k, v in plan.items()})


def _write_report(run: Run) -> None:
    """`<run_dir>/report.html`; a report that fails to render never fails the run."""
    try:
        from vectune.report import write_report

        log.info("report: %s", write_report(run.dir))
    except Exception as exc:  # noqa: BLE001 - the run's results are already saved
        log.warning("could not write the run report: %s: %s", type(exc).__name__, exc)


def reindex(spec: Spec, *, model: str | None = None, run_id: str | None = None, full: bool = False,
            wait: float = 0.0) -> dict:
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
        path, source = _named_model(spec, model), "--model"
    elif previous.get("path") and run.stage_info("reindex").get("status") in ("running", "failed"):
        path, source = previous["path"], f"resuming run {run.id}"
    else:
        path, source = promoted_model(spec)
    check_sequence_lengths(path, {"model.max_seq_length": spec.model.max_seq_length})
    from vectune.lease import alias_lease

    if spec.model.precision == "auto" and spec.index.num_gpus > 0:
        with ray_session(spec.runtime):  # a GPU worker says whether it encodes in fp16
            spec = resolve_precision(spec, run, train=False)
    else:  # encoding on CPUs: auto is fp32 on every CPU, no worker needs asking
        spec = resolve_precision(spec, run, train=False)
    with alias_lease(spec, run.id, wait=wait) as lease:
        log.info("re-indexing %s with %s", spec.name, source)
        result = reindex_stage(spec, run, path, full=full)
    return {**result, "model_source": source, "run_dir": str(run.dir), "lease": lease}


def rollback(spec: Spec, *, to: str | None = None, wait: float = 0.0) -> dict:
    """`vectune rollback`: move the alias back to the previous verified collection (or `to`)."""
    from vectune.index import collections, connect
    from vectune.lease import alias_lease

    with alias_lease(spec, "rollback", wait=wait):
        store = connect(spec)
        try:
            return collections.rollback(store, spec, to)
        finally:
            store.close()


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
        spec = resolve_precision(spec, run)
        tspec = tuner.pinned_runs(renamed(spec, (spec.name + "-tune")[:63]))
        return tuner.search(spec, tspec, run, validation, rest, base_model_path(spec))
