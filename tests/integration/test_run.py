"""`vectune run` on a SciFact slice, the happy path through to the alias swap: mine, train
(Ray Train, the sentence-transformers trainer), evaluate base and tuned, the gate, re-index
into a new collection, verify, swap; then the report and `vectune search` with the model
stamped on the live collection. Real Ray, the real model, the embedded Qdrant engine.

The slice trains on the queries it is scored on (its train labels are the test labels), so
the gate passes for certain: this test is about the loop's plumbing, not about the gain,
which `test_graded.py` and the SciFact quick start measure honestly.
"""

from __future__ import annotations

import json
import shutil

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
                          "evaluate": {"allow_overlap": True, "gate": {"metric": "ndcg@10", "min_gain": 0.005, "no_regress": []}}})
    mapping = yaml.safe_load(sl.spec_path.read_text())
    shutil.copy(sl.qrels_path("test"), sl.root / "qrels" / "train.tsv")
    mapping["data"]["train"] = {"path": "qrels/train.tsv"}
    mapping["index"] = {"collection": "slice", "alias": "slice", "keep": 2}
    sl.spec_path.write_text(yaml.safe_dump(mapping))
    return sl.spec_path


def test_run_ends_with_the_alias_on_a_verified_new_collection(ray_local, spec_path):
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(spec_path), "--run-id", "happy", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    spec = load_spec(spec_path)
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
