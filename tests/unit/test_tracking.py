"""`vectune.tracking` without Ray: where runs go, and a run folder written by hand (as the stages
write it) logged to a real local MLflow store and read back. The whole loop against MLflow is
`tests/integration/test_run.py::test_run_is_logged_to_a_local_mlflow_store`."""

from __future__ import annotations

import json

import pytest

from vectune import tracking
from vectune.runs import Run
from vectune.spec import load_spec, parse_overrides

mlflow = pytest.importorskip("mlflow")


def _spec(tiny_beir, *sets: str):
    return load_spec(tiny_beir.spec_path, parse_overrides(["runtime.tracking=mlflow", *sets]))


def test_tracking_uri_precedence(tiny_beir, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = _spec(tiny_beir)
    assert tracking.tracking_uri(spec) == f"sqlite:///{spec.runs_root()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking.tracking_uri(spec) == "http://mlflow:5000"
    assert tracking.tracking_uri(_spec(tiny_beir, "runtime.tracking_uri=sqlite:////tmp/x.db")) == "sqlite:////tmp/x.db"


def test_off_by_default_logs_nothing(tiny_beir):
    spec = load_spec(tiny_beir.spec_path)
    assert spec.runtime.tracking == "none"
    run = Run.create(spec, "r0")
    assert tracking.log_run(spec, run) is None
    assert "tracking" not in json.loads((run.dir / "manifest.json").read_text())
    assert not (run.dir.parent.parent / "mlflow.db").exists()


def test_a_failed_run_is_logged_with_what_it_has(tiny_beir, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = _spec(tiny_beir, "runtime.tracking_experiment=tiny-exp", "train.learning_rate=3e-5")
    run = Run.create(spec, "r1")
    with run.stage("mine") as outputs:
        outputs.update(rows=12, negatives=10, seconds=1.5, triples="mine/triples.parquet")
    with pytest.raises(RuntimeError), run.stage("train"):
        raise RuntimeError("worker died")
    run.write_json("metrics.json", {"base": {"test": {"metrics": {"ndcg@10": 0.5, "recall@100": 0.75}}}})
    (run.dir / "train").mkdir()
    (run.dir / "train" / "loss.jsonl").write_text(
        "".join(json.dumps({"step": i, "loss": 1.0 / i, "lr": 1e-4}) + "\n" for i in (1, 2, 3)))

    record = tracking.log_run(spec, run, status="FAILED")

    client = mlflow.MlflowClient(tracking_uri=record["uri"])
    assert client.get_experiment(record["experiment_id"]).name == "tiny-exp"
    found = client.get_run(record["run_id"])
    assert found.info.status == "FAILED" and found.info.run_name == "r1"
    assert found.data.params["train.learning_rate"] == "3e-05"
    # as in the YAML file, PyYAML reads `3e-5` (no dot) as text, and the spec's float field takes it
    assert json.loads(found.data.tags["vectune.overrides"]) == {
        "runtime.tracking": "mlflow", "runtime.tracking_experiment": "tiny-exp", "train.learning_rate": "3e-5"}
    metrics = found.data.metrics
    assert metrics["stage.mine.rows"] == 12 and metrics["stage.mine.output_seconds"] == 1.5
    assert "stage.mine.triples" not in metrics  # not a number
    assert "stage.train.seconds" in metrics and metrics["base.test.ndcg_at_10"] == 0.5
    assert [m.value for m in sorted(client.get_metric_history(record["run_id"], "train.loss"),
                                    key=lambda m: m.step)] == pytest.approx([1.0, 0.5, 1 / 3])
    assert "vectune.gate" not in found.data.tags  # no gate was reached
    assert not client.list_artifacts(record["run_id"], "model")  # no tuned model to log
    assert json.loads((run.dir / "manifest.json").read_text())["tracking"] == [record]
    # the default local store keeps its artifacts beside the runs, not in the working folder
    assert (tiny_beir.root.parent / "runs" / "mlflow-artifacts").is_dir()


def test_bm25_and_each_models_gain_over_it_are_logged(tiny_beir, monkeypatch):
    """BM25's scores (`bm25.<split>.<metric>`), each model's gain over it
    (`<role>.<split>.over_bm25.<metric>`), its stage and its settings as parameters."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = _spec(tiny_beir, "bm25.k=0.9")
    run = Run.create(spec, "r2")
    with run.stage("evaluate:bm25:test") as outputs:
        outputs.update({"ndcg@10": 0.68, "recall@100": 0.92}, cached=True)
    run.write_json("metrics.json", {
        "base": {"test": {"metrics": {"ndcg@10": 0.645, "recall@100": 0.95, "mrr@10": 0.6}}},
        "tuned": {"test": {"metrics": {"ndcg@10": 0.73, "recall@100": 0.96}}},
        "bm25": {"test": {"metrics": {"ndcg@10": 0.68, "recall@100": 0.92}}}})

    record = tracking.log_run(spec, run)

    found = mlflow.MlflowClient(tracking_uri=record["uri"]).get_run(record["run_id"])
    metrics = found.data.metrics
    assert metrics["bm25.test.ndcg_at_10"] == 0.68 and metrics["bm25.test.recall_at_100"] == 0.92
    assert metrics["tuned.test.over_bm25.ndcg_at_10"] == pytest.approx(0.05)
    assert metrics["base.test.over_bm25.ndcg_at_10"] == pytest.approx(-0.035)
    assert metrics["base.test.over_bm25.recall_at_100"] == pytest.approx(0.03)
    assert "base.test.over_bm25.mrr_at_10" not in metrics  # BM25 has no mrr@10 here: no gain to state
    assert not any(name.startswith("bm25.test.over_bm25") for name in metrics)
    assert metrics["stage.evaluate.bm25.test.ndcg_at_10"] == 0.68 and metrics["stage.evaluate.bm25.test.cached"] == 1.0
    params = found.data.params
    assert float(params["bm25.k"]) == 0.9 and params["bm25.language"] == "english"
