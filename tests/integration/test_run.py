"""`vectune run` on a SciFact slice, the happy path through to the alias swap: mine, train
(Ray Train, the sentence-transformers trainer), evaluate base and tuned, the gate, re-index
into a new collection, verify, swap; then the report and `vectune search` with the model
stamped on the live collection. Real Ray, the real model, the embedded Qdrant engine. The
run is logged to a real local MLflow store and read back from it.

The slice trains on the queries it is scored on (its train labels are the test labels), so
the gate passes for certain: this test is about the loop's plumbing, not about the gain,
which `test_graded.py` and the SciFact quick start measure honestly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from vectune.cli import app
from vectune.runs import Run
from vectune.spec import load_spec

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory, make_slice):
    sl = make_slice(tmp_path_factory.mktemp("run"), n_docs=120, split="test", n_queries=40, seed=11,
                    spec={"model": {"max_seq_length": 48},
                          "mine": {"num_negatives": 1, "range_max": 20},
                          "train": {"workers": 1, "cpus_per_worker": 1.5, "batch_size": 16, "epochs": 3,
                                    "negatives": 1, "learning_rate": 1e-4, "max_failures": 0,
                                    "validation_queries": 0},
                          "evaluate": {"overlap": "allow", "gate": {"metric": "ndcg@10", "min_gain": 0.005, "no_regress": []}}})
    mapping = yaml.safe_load(sl.spec_path.read_text())
    shutil.copy(sl.qrels_path("test"), sl.root / "qrels" / "train.tsv")
    mapping["data"]["train"] = {"path": "qrels/train.tsv"}
    mapping["index"] = {"collection": "slice", "alias": "slice", "keep": 2}
    sl.spec_path.write_text(yaml.safe_dump(mapping))
    return sl.spec_path


@pytest.fixture(scope="module")
def happy(ray_local, spec_path):
    """One `vectune run` of the slice, logged to a real local MLflow store (tracking switched on
    the way a user tries it: --set, no edit of the YAML). Both tests below read it."""
    import os

    pytest.importorskip("mlflow")
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        result = CliRunner().invoke(app, ["run", str(spec_path), "--run-id", "happy", "--set",
                                          "runtime.tracking=mlflow", "--json"])
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    return result


def test_run_ends_with_the_alias_on_a_verified_new_collection(happy, spec_path):
    runner = CliRunner()
    result = happy
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    spec = load_spec(spec_path, {"runtime.tracking": "mlflow"})  # as the run loaded it (Run.open records a changed spec)
    run = Run.open(spec, "happy")
    manifest = run.manifest
    for stage in ("mine", "train", "evaluate:base:test", "evaluate:tuned:test", "gate", "reindex"):
        assert manifest["stages"][stage]["status"] == "done", stage
    gate = manifest["gate"]
    assert gate["passed"] and gate["tuned"] - gate["base"] >= 0.005
    assert out["gate"]["passed"] and out["train"]["steps"] >= 3
    collection = manifest["collection"]
    assert collection["name"].startswith("slice__") and collection["points"] == 120
    # the report of this run, beside its results
    page = (run.dir / "report.html").read_text(encoding="utf-8")
    metrics = json.loads((run.dir / "metrics.json").read_text())
    assert f"{metrics['tuned']['test']['metrics']['ndcg@10']:.4f}" in page
    # the alias is live on the new collection, and search uses the model stamped on it
    found = runner.invoke(app, ["search", str(spec_path), "a claim about proteins", "-k", "3", "--json"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)
    assert hits["alias"] == "slice" and hits["collection"] == collection["name"]
    assert hits["model"]["stamped"] == manifest["models"]["tuned"]["fingerprint"] == hits["model"]["fingerprint"]
    assert len(hits["hits"]) == 3 and not hits["model"]["forced"]


def test_run_is_logged_to_a_local_mlflow_store(happy, spec_path):
    """`runtime.tracking: mlflow`: the run above, read back through MLflow's own client from the
    real local store it wrote (SQLite under the runs folder: MLflow 3 retired its plain file
    store). Nothing mocked."""
    mlflow = pytest.importorskip("mlflow")
    assert happy.exit_code == 0, happy.output
    out = json.loads(happy.stdout)
    run_dir = spec_path.parent / "runs" / "slice" / "happy"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["overrides"] == {"runtime.tracking": "mlflow"}
    tracked = out["tracking"]
    assert manifest["tracking"] == [tracked]
    assert tracked["uri"] == f"sqlite:///{spec_path.parent / 'runs' / 'mlflow.db'}"

    client = mlflow.MlflowClient(tracking_uri=tracked["uri"])
    experiment = client.get_experiment_by_name("slice")
    assert experiment.experiment_id == tracked["experiment_id"]
    (found,) = client.search_runs([experiment.experiment_id], filter_string="tags.`vectune.run_id` = 'happy'")
    assert found.info.run_id == tracked["run_id"] and found.info.status == "FINISHED"

    # parameters: the whole spec, flattened, with the override's value
    params = found.data.params
    assert float(params["train.epochs"]) == 3 and params["train.learning_rate"] == "0.0001"
    assert params["runtime.tracking"] == "mlflow" and params["evaluate.gate.metric"] == "ndcg@10"
    assert found.data.tags["vectune.spec_hash"] == manifest["spec_hash"]

    # per-stage metrics and scores, as the run folder has them
    metrics = found.data.metrics
    scores = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["tuned.test.ndcg_at_10"] == pytest.approx(scores["tuned"]["test"]["metrics"]["ndcg@10"])
    assert metrics["base.test.ndcg_at_10"] == pytest.approx(scores["base"]["test"]["metrics"]["ndcg@10"])
    for stage in ("mine", "train", "evaluate.base.test", "evaluate.tuned.test", "gate", "reindex"):
        assert metrics[f"stage.{stage}.seconds"] == pytest.approx(
            manifest["stages"][stage.replace(".", ":")]["seconds"]), stage
    assert metrics["stage.reindex.points"] == 120
    losses = client.get_metric_history(found.info.run_id, "train.loss")
    steps = [json.loads(line) for line in (run_dir / "train" / "loss.jsonl").read_text().splitlines() if line]
    assert sorted((m.step, m.value) for m in losses) == [(row["step"], pytest.approx(row["loss"])) for row in steps]
    assert len(steps) >= 2

    # the gate decision
    gate = manifest["gate"]
    assert found.data.tags["vectune.gate"] == "passed" and metrics["gate.passed"] == 1.0
    assert metrics["gate.gain"] == pytest.approx(gate["gain"])
    logged_gate = client.download_artifacts(found.info.run_id, "run/gate.json", str(spec_path.parent))
    assert json.loads(Path(logged_gate).read_text()) == gate

    # the tuned model: downloaded from MLflow, it embeds exactly as the run's own model folder
    names = {a.path for a in client.list_artifacts(found.info.run_id, "model")}
    assert {"model/modules.json", "model/model.safetensors", "model/config.json"} <= names
    local = client.download_artifacts(found.info.run_id, "model", str(spec_path.parent / "downloaded"))
    from sentence_transformers import SentenceTransformer

    texts = ["a claim about proteins", "gene expression in mice"]
    logged = SentenceTransformer(local, device="cpu").encode(texts)
    own = SentenceTransformer(manifest["models"]["tuned"]["path"], device="cpu").encode(texts)
    np.testing.assert_allclose(logged, own, atol=1e-6)
    assert {a.path for a in client.list_artifacts(found.info.run_id, "run")} >= {
        "run/manifest.json", "run/metrics.json", "run/report.html", "run/gate.json"}
