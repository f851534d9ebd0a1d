"""One trial: the spec with the trial's values -> (mine) -> train -> score on validation queries."""

from __future__ import annotations

import math
import os
import time

from vectune.data import DomainData, Labels
from vectune.runs import Run
from vectune.spec import Spec
from vectune.tune.space import apply
from vectune.tune.validate import validation_metrics


def run_trial(config: dict, *, spec: Spec, tune_id: str, triples: str | None, train_labels: Labels,
              validation: Labels, base_model: str) -> None:
    """Ray Tune function trainable (runs in a Tune trial actor).

    `vectune.train.train` starts its own Ray Train TorchTrainer from here: Ray Train v2
    supports a Trainer launched inside a Tune trial, its workers scheduled beside the trial
    with their own resources (`train.workers` x `train.cpus_per_worker`).

    Args:
        config: the trial's values by dotted name (`train.learning_rate`, ...).
        spec: the tune spec (renamed so its runs live apart).
        tune_id: the search's run id; the trial's run is `<tune_id>/trials/<trial_id>`.
        triples: the triples mined once for every trial, or None when mine settings are
            searched (each trial then mines with its own).
        train_labels: the training queries left after the validation carve-out.
        validation: the held-out training queries the trial is scored on.
        base_model: the resolved base model path.
    """
    from ray import tune

    from vectune.train import train

    start = time.perf_counter()
    trial_spec = apply(spec, config)
    # the search scores trials on its own held-out queries: no second hold-out and no
    # mixing inside a trial (the final run chooses its checkpoint and weight itself)
    trial_spec.train.validation_queries = 0
    trial_spec.train.interpolation = [1.0]
    run = Run.create(trial_spec, f"{tune_id}/trials/{tune.get_context().get_trial_id()}", nested=True)
    data = DomainData(trial_spec, train=train_labels)
    if triples is None:
        from vectune.mine import mine

        mine(trial_spec, data, run)
    else:
        run.path("mine").mkdir(parents=True, exist_ok=True)
        link = run.path("mine", "triples.parquet")
        if not link.exists():
            os.symlink(triples, link)
    summary = train(trial_spec, run, base_model)
    threads = spec.runtime.torch_threads or scoring_threads(trial_spec)
    metrics = validation_metrics(trial_spec, data, summary["model"], validation, threads)
    run.write_json("validation.json", {"config": {k: _plain(v) for k, v in config.items()}, "metrics": metrics,
                                       "train": summary})
    tune.report({**metrics, "final_loss": summary.get("final_loss"), "steps": summary["steps"],
                 "trial_seconds": round(time.perf_counter() - start, 2), "run_dir": str(run.dir)})


def scoring_threads(spec: Spec) -> int:
    """Torch threads for scoring a trial's model: the trial's own CPUs, plus, while trials
    run one at a time, those its training workers held (training is over by then)."""
    cpus = spec.tune.cpus_per_trial
    if spec.tune.max_concurrent == 1:
        cpus += spec.train.workers * spec.train.cpus_per_worker
    return max(1, int(math.ceil(cpus - 1e-6)))


def _plain(value):
    return value.item() if hasattr(value, "item") else value
