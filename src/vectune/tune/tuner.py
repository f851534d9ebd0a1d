"""`vectune tune`: search train (and mine) settings with Ray Tune on held-out training queries.

Top to bottom: carve `tune.validation_queries` training queries out (seeded); mine once
with the base model on the rest (unless mine settings are searched: then every trial
mines); run the trials (each trains with Ray Train and is scored by nDCG@10, or
`tune.metric`, on the carved-out queries; the test split is never read); write the best
values into `<spec>.tuned.yaml` next to the spec.
"""

from __future__ import annotations

import logging
import os
import time

from vectune.data import DomainData
from vectune.errors import SpecError, StageError
from vectune.runs import Run
from vectune.spec import Problem, Spec
from vectune.tune.space import search_space, write_tuned_spec
from vectune.tune.trial import run_trial

log = logging.getLogger("vectune")


def check(spec: Spec) -> None:
    """What a search needs from the spec, checked before any work."""
    source = str(spec.source or "<spec>")
    if not spec.tune.space:
        raise SpecError(source, [Problem("tune.space", "nothing to search: add e.g. "
                                         "`train.learning_rate: {type: loguniform, low: 1e-5, high: 1e-4}`")])
    if spec.data.train is None:
        raise SpecError(source, [Problem("data.train", "tuning needs training labels to carve validation queries from")])
    if spec.tune.metric not in spec.evaluate.metrics:
        raise SpecError(source, [Problem("tune.metric", f"{spec.tune.metric!r} is not in evaluate.metrics "
                                                        f"{spec.evaluate.metrics}")])


def _scheduler(spec: Spec):
    if spec.tune.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # a trial reports once, after training and scoring: ASHA can only stop trials that
    # report during training, so today it ranks finished trials and stops none
    return ASHAScheduler(time_attr="training_iteration", grace_period=1, max_t=1)


def search(spec: Spec, tspec: Spec, run: Run, validation, rest, base: str) -> dict:
    """Run the search inside `run` (Ray running); returns the trials, the best values and
    the tuned spec's path.

    Args:
        spec: the user's spec; tspec: the same, renamed for the search's runs.
        validation, rest: the carved-out training labels (scored on) and the rest (trained on).
        base: the resolved base model.
    """
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    t = spec.tune
    tune_id = run.id
    baseline = spec_values(spec) if t.baseline else None
    run.record("tune", {"validation_queries": sorted(validation.qrels), "train_queries": len(rest.qrels),
                        "space": {k: v.model_dump() for k, v in t.space.items()}, "baseline": baseline})
    mine_searched = any(name.startswith("mine.") for name in t.space)
    start = time.perf_counter()
    # the trials share one mine unless mine settings are searched
    triples = None
    if not mine_searched:
        from vectune.mine import mine

        mine(tspec, DomainData(tspec, train=rest), run)
        triples = str(run.path("mine", "triples.parquet"))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=tspec, tune_id=tune_id, triples=triples, train_labels=rest,
                             validation=validation, base_model=base),
        {"cpu": t.cpus_per_trial, "gpu": t.gpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(spec),
        tune_config=tune.TuneConfig(
            metric=t.metric, mode="max", num_samples=t.trials, scheduler=_scheduler(spec),
            # the limit goes to the generator itself: Tune ignores max_concurrent_trials
            # for a BasicVariantGenerator passed in (it is not a Searcher)
            # the spec's own values go first (`tune.baseline`): the search reports its gain over them
            search_alg=BasicVariantGenerator(points_to_evaluate=[baseline] if baseline else None,
                                             random_state=t.seed, max_concurrent=t.max_concurrent),
        ),
        run_config=tune.RunConfig(name="ray", storage_path=str(run.path("tune")), verbose=0,
                                  callbacks=[_trial_log(t.trials, t.metric)]),
    )
    grid = tuner.fit()
    trials = _trials(grid, t.metric, baseline)
    done = [tr for tr in trials if tr["status"] == "done"]
    if not done:
        errors = "; ".join(f"{tr['trial_id']}: {tr['error']}" for tr in trials)[:2000]
        run.record("tune_result", {"trials": trials})
        raise StageError(f"every trial failed ({errors}); trial logs under {run.path('tune')}")
    best = max(done, key=lambda tr: tr["metrics"][t.metric])
    base_trial = next((tr for tr in trials if tr["baseline"]), None)
    base_score = base_trial["metrics"].get(t.metric) if base_trial and base_trial["status"] == "done" else None
    versus = (f"; the spec's own values scored {base_score:.4f} (gain {best['metrics'][t.metric] - base_score:+.4f})"
              if base_score is not None else "")
    header = (f"written by `vectune tune` (run {tune_id}): best of {len(trials)} trials by {t.metric} "
              f"{best['metrics'][t.metric]:.4f}\non {len(validation.qrels)} held-out training queries{versus}; "
              f"values: {best['config']}")
    tuned_path = write_tuned_spec(spec, best["config"], header)
    result = {"run_id": tune_id, "run_dir": str(run.dir), "metric": t.metric, "trials": trials, "best": best,
              "baseline": base_trial,
              "gain_vs_baseline": None if base_score is None else best["metrics"][t.metric] - base_score,
              "tuned_spec": str(tuned_path), "validation_queries": len(validation.qrels),
              "train_queries": len(rest.qrels), "seconds": round(time.perf_counter() - start, 2)}
    run.record("tune_result", {k: v for k, v in result.items() if k != "run_dir"})
    return result


def pinned_runs(spec: Spec) -> Spec:
    """The spec with its runs folder made absolute: Tune runs each trial in a working
    directory of its own, where a relative `runtime.runs` (or VECTUNE_RUNS) would put the
    trials' models and logs."""
    root = spec.runs_root()
    if "://" in root:
        return spec
    if os.environ.get("VECTUNE_RUNS"):
        os.environ["VECTUNE_RUNS"] = root  # read again in the trials, which inherit VECTUNE_* variables
    return spec.derived(runtime=spec.runtime.model_copy(update={"runs": root}))


def _trial_log(total: int, metric: str):
    """A Tune callback that logs each trial's start and outcome (Tune itself runs quiet)."""
    from ray.tune import Callback

    class TrialLog(Callback):
        finished = 0

        def on_trial_start(self, iteration, trials, trial, **info):
            log.info("trial %d/%d (%s) started: %s", len(trials), total, trial.trial_id, _short(trial.config))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.finished += 1
            result = trial.last_result or {}
            score = result.get(metric)
            log.info("trial %s done (%d/%d): %s %s after %ss", trial.trial_id, self.finished, total, metric,
                     f"{score:.4f}" if isinstance(score, float) else score, result.get("trial_seconds"))

        def on_trial_error(self, iteration, trials, trial, **info):
            log.warning("trial %s failed: %s", trial.trial_id, _short(trial.config))

    return TrialLog()


def _short(config: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


def spec_values(spec: Spec) -> dict:
    """The spec's own value of every searched parameter (the baseline trial's config)."""
    dump = spec.canonical()
    out = {}
    for name in spec.tune.space:
        node = dump
        for part in name.split("."):
            node = node[part]
        out[name] = node
    return out


def _trials(grid, metric: str, baseline: dict | None = None) -> list[dict]:
    out = []
    for r in grid:
        m = r.metrics or {}
        config = {k: (v.item() if hasattr(v, "item") else v) for k, v in (r.config or {}).items()}
        ok = r.error is None and metric in m
        out.append({
            "trial_id": m.get("trial_id") or r.path.rsplit("/", 1)[-1], "config": config,
            # the first trial with the spec's values (Tune hands points_to_evaluate over unchanged)
            "baseline": baseline is not None and config == baseline and not any(o["baseline"] for o in out),
            "status": "done" if ok else "failed", "error": None if ok else str(r.error)[:500],
            "metrics": {k: m[k] for k in m if "@" in k},
            "final_loss": m.get("final_loss"), "steps": m.get("steps"), "seconds": m.get("trial_seconds"),
            "run_dir": m.get("run_dir"),
        })
    return out
