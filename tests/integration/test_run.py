"""`vectune run` on a SciFact slice: the happy path through to the alias swap, then a champion /
challenger round against the model that happy run made live. Real Ray, the real model, the
embedded Qdrant engine, a real local MLflow store.

Run 1 (`happy`): mine, train (Ray Train, the sentence-transformers trainer), evaluate base and
tuned, the gate (nothing is live yet: the base is the champion), re-index into a new
collection, verify, swap; then the report, `vectune search` with the model stamped on the live
collection, and the run read back from MLflow. Run 2 trains lightly and is judged against the
live model with a significance test: refused (exit 3); the same run judged against the base
passes. The tests share run 1 (one loop less in CI) and run in file order.

The slice trains on the queries it is scored on (its train labels are the test labels,
`evaluate.overlap: allow`), so each run's training strength is plain in its scores: run 1
trains hard and passes for certain; run 2 gives a model better than the base but worse than
run 1 (both figures asserted). This file is about the loop's plumbing and the gate's
decisions, not about the gain, which `test_graded.py` and the SciFact quick start measure
honestly.
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

STRONG = {"epochs": 3, "learning_rate": 1e-4}
LIGHT = {"epochs": 1, "learning_rate": 2e-5}


@pytest.fixture(scope="module")
def slice_dir(tmp_path_factory, make_slice, shm):
    sl = make_slice(tmp_path_factory.mktemp("run"), n_docs=120, split="test", n_queries=40, seed=11,
                    spec={"model": {"max_seq_length": 48}, "mine": {"num_negatives": 1, "range_max": 20}})
    shutil.copy(sl.qrels_path("test"), sl.root / "qrels" / "train.tsv")
    return sl, shm


def _spec(slice_dir, name: str, train: dict, **gate) -> Path:
    sl, shm = slice_dir
    mapping = yaml.safe_load(sl.spec_path.read_text())
    mapping["data"]["train"] = {"path": "qrels/train.tsv"}
    mapping["train"] = {"workers": 1, "cpus_per_worker": 1.5, "batch_size": 16, "negatives": 1, "max_failures": 0,
                        "validation_queries": 0, "interpolation": [1.0], **train}
    mapping["evaluate"] = {"overlap": "allow", "gate": {"metric": "ndcg@10", "min_gain": 0.005,
                                                           "no_regress": [], **gate}}
    mapping["index"] = {"collection": "slice", "alias": "slice", "keep": 3,
                        "qdrant": {"path": str(shm / "qdrant-run")}}
    path = sl.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(mapping))
    return path


def _alias(spec_path) -> str | None:
    from vectune.index import connect
    from vectune.index import collections as cols

    store = connect(load_spec(spec_path))
    try:
        return cols.live_collection(store, "slice")
    finally:
        store.close()


def _exists(spec_path, name: str) -> bool:
    from vectune.index import connect

    store = connect(load_spec(spec_path))
    try:
        return store.exists(name)
    finally:
        store.close()


@pytest.fixture(scope="module")
def spec_path(slice_dir) -> Path:
    return _spec(slice_dir, "strong", STRONG)


@pytest.fixture(scope="module")
def happy(ray_local, spec_path):
    """One `vectune run` of the slice, logged to a real local MLflow store (tracking switched on
    the way a user tries it: --set, no edit of the YAML). Every test below reads it."""
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
    assert gate["against"] == "base"  # nothing live yet: the base is the champion
    assert "nothing is live" in gate["champion_model"]["fallback"]
    assert out["gate"]["passed"] and out["train"]["steps"] >= 3
    # precision: auto resolved (by a worker) and recorded as what ran, never `auto`
    from vectune.precision import cpu_info

    assert {f: c["requested"] for f, c in manifest["precision"].items()} == {"model.precision": "auto",
                                                                            "train.precision": "auto"}
    assert manifest["precision"]["model.precision"]["resolved"] == "fp32"
    assert manifest["precision"]["train.precision"]["resolved"] == ("bf16" if cpu_info().native_bf16 else "fp32")
    resolved = spec.model_copy(update={
        "model": spec.model.model_copy(update={"precision": "fp32"}),
        "train": spec.train.model_copy(update={"precision": manifest["precision"]["train.precision"]["resolved"]})})
    assert run.is_done("train", {"spec": resolved.section_digest("data", "model", "mine", "train"),
                                 "triples": manifest["stages"]["mine"]["finished"]})  # keyed by resolved values
    # the plan printed at the start: every stage's size, and times from a measured pace
    plan = manifest["plan"]
    assert set(plan["stages"]) == {"mine", "train", "evaluate", "reindex"} and plan["documents"] == 120
    assert plan["pace"]["doc"] > 0 and plan["pace"]["train_doc"] > 0
    # the forecast counts steps from the labelled pairs, before mining: within a step or 25%
    assert abs(plan["stages"]["train"]["steps"] - out["train"]["steps"]) <= max(1, out["train"]["steps"] // 4)
    assert all(plan["stages"][s]["seconds"] > 0 for s in ("mine", "train", "evaluate"))
    collection = manifest["collection"]
    assert collection["name"] == "slice__happy" and collection["points"] == 120
    assert _alias(spec_path) == "slice__happy"
    # the gate judged what is served (`evaluate.through: index`): the tuned model through the very
    # version then promoted (built and verified before the gate, promoted without loading it
    # again), the base through a scoring collection that is no version of the alias
    assert gate["through"]["tuned"] == {"through": "index", "collection": "slice__happy"}
    assert gate["through"]["base"]["collection"].startswith("slice__score-")
    assert collection["reused"] and collection["written"] == 0 and collection["verified"]["points"] == 120
    listed = runner.invoke(app, ["collections", str(spec_path), "--json"])
    assert listed.exit_code == 0, listed.output
    assert [c["name"] for c in json.loads(listed.stdout)["collections"]] == ["slice__happy"]
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
    # `evaluate --live` scores what is served: the live collection through the Query API, which
    # is what the gate scored the challenger through before it was promoted
    scored = runner.invoke(app, ["evaluate", str(spec_path), "--live", "--json"])
    assert scored.exit_code == 0, scored.output
    live = json.loads(scored.stdout)["live"]
    assert live["through"] == "index" and live["collection"] == "slice__happy"
    assert live["metrics"] == pytest.approx(metrics["tuned"]["test"]["metrics"])
    both = runner.invoke(app, ["evaluate", str(spec_path), "--live", "--model", "x", "--json"])
    assert both.exit_code == 2 and "--live" in both.output


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
    assert params["model.precision"] == manifest["precision"]["model.precision"]["resolved"] != "auto"
    assert params["train.precision"] == manifest["precision"]["train.precision"]["resolved"] != "auto"
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


def test_rerunning_the_evaluation_of_a_live_run_scores_its_version_as_served(happy, spec_path):
    """Once a run's version is live, re-running its evaluation scores the tuned model through
    that version as it is served: never rebuilt, never stamped back to a candidate. (After the
    MLflow test: this re-run changes the run's manifest.)"""
    from vectune.index import connect

    assert happy.exit_code == 0, happy.output
    again = CliRunner().invoke(app, ["run", str(spec_path), "--run-id", "happy", "--from", "evaluate", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["evaluate"]["tuned"]["collection"] == "slice__happy"
    assert _alias(spec_path) == "slice__happy"
    store = connect(load_spec(spec_path))
    try:
        assert store.read_stamp("slice__happy")["state"] == "ready"
    finally:
        store.close()


# CI time (58 s: a second run): the default tier keeps the gate's judgement against a champion
# (tests/unit/test_evaluate_gate.py), the live version scored as served (the re-evaluation below)
# and the gate scored through the collection it would promote (test_hybrid.py)
@pytest.mark.slow
def test_a_model_better_than_base_but_worse_than_the_live_one_is_refused(happy, slice_dir):
    """Run 2 against the live model of run 1 (`happy`)."""
    assert happy.exit_code == 0, happy.output
    runner = CliRunner()

    light = _spec(slice_dir, "light", LIGHT)
    second = runner.invoke(app, ["run", str(light), "--run-id", "r2", "--json"])
    assert second.exit_code == 3, second.output  # the gate refused: exit 3, nothing re-indexed
    spec2 = load_spec(light)
    gate2 = Run.open(spec2, "r2").manifest["gate"]
    metrics = json.loads((Run.open(spec2, "r2").dir / "metrics.json").read_text())
    base, champion, tuned = (metrics[r]["test"]["metrics"]["ndcg@10"] for r in ("base", "champion", "tuned"))
    assert base < tuned < champion, (base, tuned, champion)  # better than base, worse than run 1
    assert gate2["against"] == "live" and gate2["champion_model"]["run_id"] == "happy"
    assert gate2["champion"] == pytest.approx(champion) and gate2["base"] == pytest.approx(base)
    assert gate2["p_value"] is not None and len(gate2["ci95"]) == 2 and gate2["gain"] < 0
    assert _alias(light) == "slice__happy"  # the alias did not move
    # the champion was scored through the live collection as served, the base through the scoring
    # collection run 1 built (not built again), and the refused candidate was dropped
    assert gate2["through"]["champion"] == {"through": "index", "collection": "slice__happy"}
    stages2 = Run.open(spec2, "r2").manifest["stages"]
    assert stages2["evaluate:base:test"]["outputs"]["cached"] is True
    assert stages2["evaluate:tuned:test"]["outputs"]["collection"] == "slice__r2"
    assert not _exists(light, "slice__r2")

    # the same challenger judged against the base model passes (its scores come from the cache)
    against_base = _spec(slice_dir, "light", LIGHT, against="base")
    third = runner.invoke(app, ["run", str(against_base), "--run-id", "r2", "--from", "gate", "--json"])
    assert third.exit_code == 0, third.output
    gate3 = json.loads(third.stdout)["gate"]
    assert gate3["passed"] and gate3["against"] == "base" and gate3["gain"] == pytest.approx(tuned - base)
    assert gate3["p_value"] <= 0.05
    assert _alias(light) == "slice__r2"
    assert json.loads(third.stdout)["reindex"]["reused"] is False  # its candidate was dropped: built anew

    listed = runner.invoke(app, ["runs", str(light), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {r["run_id"]: r for r in json.loads(listed.stdout)["runs"]}
    assert rows["r2"]["live"] and not rows["happy"]["live"] and rows["r2"]["gate"]["against"].startswith("base model")


@pytest.mark.slow  # one more loop on the slice (~1 min); run with --run-slow
def test_a_warm_start_continues_from_the_live_model_and_lineage_records_it(happy, slice_dir):
    """`train.init: live`: training starts from the model stamped on the live collection, and the
    run's manifest records which (its path and fingerprint, the live collection's)."""
    from vectune.index.live import serving_model

    runner = CliRunner()
    assert happy.exit_code == 0, happy.output  # a model is live (run 1's, or run 2's after the gate test)
    warm = _spec(slice_dir, "warm", LIGHT, against="base")
    live = serving_model(load_spec(warm))
    assert live and live["path"]
    result = runner.invoke(app, ["run", str(warm), "--run-id", "w1", "--set", "train.init=live", "--json"])
    assert result.exit_code in (0, 3), result.output  # promoted or not: the lineage is what is checked
    manifest = Run.open(load_spec(warm, {"train.init": "live"}), "w1").manifest
    init = manifest["models"]["init"]
    assert init["from"] == "live" and init["path"] == live["path"] and init["fingerprint"] == live["fingerprint"]
    assert manifest["overrides"] == {"train.init": "live"}
    assert manifest["models"]["tuned"]["fingerprint"] != live["fingerprint"]  # it did train on from there
