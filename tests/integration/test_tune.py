"""`vectune tune`: a real two-trial Ray Tune search on a small SciFact slice.

Each trial trains with Ray Train (a TorchTrainer started inside the Tune trial) and is
scored by nDCG@10 on training queries held out from mining; the best values are
written as `<spec>.tuned.yaml`, which must load as a valid spec.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from vectune.spec import load_spec

TUNE = {
    "space": {"train.learning_rate": {"type": "loguniform", "low": 1e-6, "high": 1e-3}},
    "trials": 2, "scheduler": "asha", "validation_queries": 10, "cpus_per_trial": 0.5, "max_concurrent": 1,
    "train_queries": 6,
}
SMALL = {
    "model": {"max_seq_length": 32},
    "mine": {"num_negatives": 1, "range_min": 0, "range_max": 10},
    "train": {"workers": 1, "cpus_per_worker": 0.8, "batch_size": 2, "epochs": 1, "negatives": 1,
              "checkpoint_every": 50, "max_failures": 0},
    "evaluate": {"metrics": ["ndcg@10", "recall@100"]},
    "tune": TUNE,
}


def test_apply_sets_nested_values_and_keeps_defaults(tmp_path, make_slice):
    from vectune.tune import apply, write_tuned_spec

    sl = make_slice(tmp_path, n_docs=40, split=("train", "test"), n_queries=12, spec=SMALL)
    spec = sl.load()
    tuned = apply(spec, {"train.learning_rate": 3e-4, "train.loss.scale": 30.0, "mine.num_negatives": 2})
    assert tuned.train.learning_rate == 3e-4 and tuned.train.loss.type == "mnrl" and tuned.train.loss.scale == 30
    assert tuned.mine.num_negatives == 2 and tuned.train.batch_size == 2
    path = write_tuned_spec(spec, {"train.learning_rate": 3e-4, "train.loss.scale": 30.0}, "header")
    assert path == sl.root / "spec.tuned.yaml"
    again = load_spec(path)
    assert again.train.learning_rate == 3e-4 and again.train.loss.scale == 30 and again.data == spec.data
    assert "tune" not in yaml.safe_load(path.read_text())


def test_carve_is_seeded_and_disjoint(tmp_path, make_slice):
    from vectune.data import DomainData
    from vectune.tune.validate import carve

    sl = make_slice(tmp_path, n_docs=40, split=("train", "test"), n_queries=12, spec=SMALL)
    labels = DomainData(sl.load()).labels("train")
    val, rest = carve(labels, 5, seed=3)
    again, _ = carve(labels, 5, seed=3)
    assert len(val.qrels) == 5 and set(val.qrels) == set(again.qrels)
    assert set(val.qrels).isdisjoint(rest.qrels) and set(val.qrels) | set(rest.qrels) == set(labels.qrels)


@pytest.mark.ray
@pytest.mark.slow  # CI time (80 s): the search space and trial plumbing have unit tests (test_tune_space.py)
def test_two_trial_search_picks_best_and_writes_a_valid_spec(tmp_path, make_slice, caplog, monkeypatch):
    import logging

    from rich.console import Console

    from vectune.commands.tune import _trials_table
    from vectune.pipeline import tune

    # a relative runs folder, as in specs/scifact.yaml: trials run in Tune's own working
    # directories, and their runs must still land here
    sl = make_slice(tmp_path, n_docs=60, split=("train", "test"), n_queries=20,
                    spec={**SMALL, "runtime": {"runs": "runs", "num_cpus": 2}})
    monkeypatch.chdir(sl.root)
    spec = sl.load()
    with caplog.at_level(logging.INFO, logger="vectune"):
        result = tune(spec, run_id="t1")
    # Tune runs quiet; vectune logs each trial's start and outcome
    messages = [r.getMessage() for r in caplog.records]
    assert sum("started: train.learning_rate=" in m for m in messages) == 2, messages
    assert sum(" done (" in m and "ndcg@10 0." in m for m in messages) == 2, messages

    trials = result["trials"]
    assert len(trials) == 2 and all(t["status"] == "done" for t in trials), trials
    rates = [t["config"]["train.learning_rate"] for t in trials]
    assert rates[0] != rates[1] and all(1e-6 <= r <= 1e-3 for r in rates)
    # one trial is the spec's own value (tune.baseline), and the gain is measured against it
    baseline = [t for t in trials if t["baseline"]]
    assert len(baseline) == 1 and baseline[0]["config"]["train.learning_rate"] == spec.train.learning_rate
    assert result["baseline"]["trial_id"] == baseline[0]["trial_id"]
    assert result["gain_vs_baseline"] == pytest.approx(
        result["best"]["metrics"]["ndcg@10"] - baseline[0]["metrics"]["ndcg@10"])
    assert result["gain_vs_baseline"] >= 0
    best = max(trials, key=lambda t: t["metrics"]["ndcg@10"])
    assert result["best"]["trial_id"] == best["trial_id"]
    # each trial really trained and was scored on the held-out training queries
    manifest = json.loads((Path(result["run_dir"]) / "manifest.json").read_text())
    held = set(manifest["tune"]["validation_queries"])
    assert len(held) == 10 and held <= set(sl.qrels["train"])
    mined = set(pq.read_table(Path(result["run_dir"]) / "mine" / "triples.parquet").column("query_id").to_pylist())
    assert mined and held.isdisjoint(mined)
    # tune.train_queries: each trial's budget is 6 of the 10 queries left after the carve-out
    assert result["train_queries"] == 6 and len(mined) <= 6
    for t in trials:
        assert Path(t["run_dir"]).is_relative_to(sl.root / "runs" / "slice-tune" / "t1" / "trials"), t["run_dir"]
        saved = json.loads((Path(t["run_dir"]) / "validation.json").read_text())
        assert saved["metrics"]["ndcg@10"] == t["metrics"]["ndcg@10"]
        assert saved["config"]["train.learning_rate"] == t["config"]["train.learning_rate"]
        assert (Path(t["run_dir"]) / "train" / "loss.jsonl").read_text().strip()
        assert (Path(t["run_dir"]) / "model" / "modules.json").exists()

    tuned = load_spec(result["tuned_spec"])
    assert Path(result["tuned_spec"]) == sl.root / "spec.tuned.yaml"
    assert tuned.train.learning_rate == pytest.approx(best["config"]["train.learning_rate"])
    assert tuned.train.batch_size == 2 and tuned.data == spec.data

    console = Console(record=True, width=200)
    console.print(_trials_table(result))
    text = console.export_text()
    assert f"{best['trial_id']} *" in text and f"{best['metrics']['ndcg@10']:.4f}" in text
    assert "(spec)" in text
