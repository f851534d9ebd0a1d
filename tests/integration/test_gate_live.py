"""Champion / challenger: the gate judges a new model against the one serving behind the
alias, with a significance test. Real runs of `vectune run` on a SciFact slice.

The slice trains on the queries it is scored on (`evaluate.overlap: allow`, as in
test_run.py) so that the strength of each run's training is plain in its scores: run 1
trains hard and is promoted; run 2 trains lightly, which honestly gives a model better than
the base but worse than run 1 (both figures asserted below)."""

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

STRONG = {"epochs": 3, "learning_rate": 1e-4}
LIGHT = {"epochs": 1, "learning_rate": 1e-5}


@pytest.fixture(scope="module")
def slice_dir(tmp_path_factory, make_slice, shm):
    sl = make_slice(tmp_path_factory.mktemp("gate"), n_docs=120, split="test", n_queries=40, seed=11,
                    spec={"model": {"max_seq_length": 48}, "mine": {"num_negatives": 1, "range_max": 20}})
    shutil.copy(sl.qrels_path("test"), sl.root / "qrels" / "train.tsv")
    return sl, shm


def _spec(slice_dir, name: str, train: dict, **gate) -> str:
    sl, shm = slice_dir
    mapping = yaml.safe_load(sl.spec_path.read_text())
    mapping["data"]["train"] = {"path": "qrels/train.tsv"}
    mapping["train"] = {"workers": 1, "cpus_per_worker": 1.5, "batch_size": 16, "negatives": 1, "max_failures": 0,
                        "validation_queries": 0, "interpolation": [1.0], **train}
    mapping["evaluate"] = {"overlap": "allow", "gate": {"metric": "ndcg@10", "min_gain": 0.005,
                                                           "no_regress": [], **gate}}
    mapping["index"] = {"collection": "slice", "alias": "slice", "keep": 3,
                        "qdrant": {"path": str(shm / "qdrant-gate")}}
    path = sl.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(mapping))
    return str(path)


def _alias(spec_path: str):
    from vectune.index import connect
    from vectune.index import collections as cols

    client = connect(load_spec(spec_path))
    try:
        return cols.live_collection(client, "slice")
    finally:
        client.close()


def test_a_model_better_than_base_but_worse_than_the_live_one_is_refused(ray_local, slice_dir):
    runner = CliRunner()
    strong = _spec(slice_dir, "strong", STRONG)
    first = runner.invoke(app, ["run", strong, "--run-id", "r1", "--json"])
    assert first.exit_code == 0, first.output
    gate1 = json.loads(first.stdout)["gate"]
    assert gate1["passed"] and gate1["against"] == "base"  # nothing live yet: the base is the champion
    assert "nothing is live" in gate1["champion_model"]["fallback"]
    live = _alias(strong)
    assert live == "slice__r1"

    light = _spec(slice_dir, "light", LIGHT)
    second = runner.invoke(app, ["run", light, "--run-id", "r2", "--json"])
    assert second.exit_code == 3, second.output  # the gate refused: exit 3, nothing re-indexed
    spec2 = load_spec(light)
    gate2 = Run.open(spec2, "r2").manifest["gate"]
    metrics = json.loads((Run.open(spec2, "r2").dir / "metrics.json").read_text())
    base, champion, tuned = (metrics[r]["test"]["metrics"]["ndcg@10"] for r in ("base", "champion", "tuned"))
    assert base < tuned < champion, (base, tuned, champion)  # better than base, worse than run 1
    assert gate2["against"] == "live" and gate2["champion_model"]["run_id"] == "r1"
    assert gate2["champion"] == pytest.approx(champion) and gate2["base"] == pytest.approx(base)
    assert gate2["p_value"] is not None and len(gate2["ci95"]) == 2 and gate2["gain"] < 0
    assert _alias(light) == "slice__r1"  # the alias did not move

    # the same challenger judged against the base model passes (its scores come from the cache)
    against_base = _spec(slice_dir, "light", LIGHT, against="base")
    third = runner.invoke(app, ["run", against_base, "--run-id", "r2", "--from", "gate", "--json"])
    assert third.exit_code == 0, third.output
    gate3 = json.loads(third.stdout)["gate"]
    assert gate3["passed"] and gate3["against"] == "base" and gate3["gain"] == pytest.approx(tuned - base)
    assert gate3["p_value"] <= 0.05
    assert _alias(light) == "slice__r2"

    listed = runner.invoke(app, ["runs", light, "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {r["run_id"]: r for r in json.loads(listed.stdout)["runs"]}
    assert rows["r2"]["live"] and not rows["r1"]["live"] and rows["r2"]["gate"]["against"].startswith("base model")


@pytest.mark.slow  # one more loop on the slice (~1 min); run with --run-slow
def test_a_warm_start_continues_from_the_live_model_and_lineage_records_it(ray_local, slice_dir):
    """`train.init: live`: training starts from the model stamped on the live collection, and the
    run's manifest records which (its path and fingerprint, the live collection's)."""
    from vectune.index.live import serving_model

    runner = CliRunner()
    strong = _spec(slice_dir, "strong", STRONG)
    if _alias(strong) is None:  # run alone: make a model live first
        first = runner.invoke(app, ["run", strong, "--run-id", "w0", "--json"])
        assert first.exit_code == 0, first.output
    warm = _spec(slice_dir, "warm", LIGHT, against="base")
    live = serving_model(load_spec(warm))
    assert live and live["path"]
    result = runner.invoke(app, ["run", warm, "--run-id", "w1", "--set", "train.init=live", "--json"])
    assert result.exit_code in (0, 3), result.output  # promoted or not: the lineage is what is checked
    manifest = Run.open(load_spec(warm, {"train.init": "live"}), "w1").manifest
    init = manifest["models"]["init"]
    assert init["from"] == "live" and init["path"] == live["path"] and init["fingerprint"] == live["fingerprint"]
    assert manifest["overrides"] == {"train.init": "live"}
    assert manifest["models"]["tuned"]["fingerprint"] != live["fingerprint"]  # it did train on from there
