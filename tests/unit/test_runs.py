"""Runs: folders, the manifest (lineage), stage status for resume."""

from __future__ import annotations

import json

import pytest

from vectune.errors import StageError
from vectune.runs import Run, inputs_digest, new_run_id
from vectune.spec import validate_dict


def make_spec(tmp_path, **train):
    mapping = {"version": 1, "name": "demo", "data": {"corpus": {"path": "c.jsonl"}},
               "train": train, "runtime": {"runs": str(tmp_path / "runs")}}
    return validate_dict(mapping, "test")


def test_create_writes_a_manifest(tmp_path):
    spec = make_spec(tmp_path)
    run = Run.create(spec, "r1")
    assert run.dir == tmp_path / "runs" / "demo" / "r1"
    manifest = json.loads((run.dir / "manifest.json").read_text())
    assert manifest["run_id"] == "r1" and manifest["name"] == "demo"
    assert manifest["spec_hash"] == spec.digest()
    assert manifest["spec"] == spec.canonical()
    for package in ("python", "vectune", "ray", "torch", "sentence-transformers", "pyarrow", "numpy"):
        assert manifest["packages"][package], package
    assert manifest["stages"] == {} and manifest["data"] == {} and manifest["models"] == {}


def test_new_run_ids_sort_by_time_and_differ():
    a, b = new_run_id(), new_run_id()
    assert a != b and len(a) == len("20250101-120000-abcd")


def test_create_on_an_existing_id_resumes_it(tmp_path):
    spec = make_spec(tmp_path)
    run = Run.create(spec, "r1")
    run.record("data", {"corpus": "abc"})
    again = Run.create(spec, "r1")
    assert again.manifest["data"] == {"corpus": "abc"}


def test_open_missing_run_is_a_stage_error(tmp_path):
    with pytest.raises(StageError, match="no run 'nope'"):
        Run.open(make_spec(tmp_path), "nope")


def test_open_with_a_changed_spec_keeps_its_history(tmp_path):
    first = make_spec(tmp_path)
    Run.create(first, "r1")
    changed = make_spec(tmp_path, epochs=3)
    run = Run.open(changed, "r1")
    assert run.manifest["spec_hash"] == changed.digest()
    assert run.manifest["spec_history"] == [first.digest()]
    assert json.loads(run.path("manifest.json").read_text())["spec"]["train"]["epochs"] == 3


def test_stage_records_status_timing_and_outputs(tmp_path):
    run = Run.create(make_spec(tmp_path), "r1")
    assert not run.is_done("mine")
    with run.stage("mine", {"k": 1}) as outputs:
        assert run.stage_info("mine")["status"] == "running"
        on_disk = json.loads(run.path("manifest.json").read_text())
        assert on_disk["stages"]["mine"]["status"] == "running"  # visible while it runs
        outputs["pairs"] = 12
    info = json.loads(run.path("manifest.json").read_text())["stages"]["mine"]
    assert info["status"] == "done" and info["outputs"] == {"pairs": 12}
    assert info["seconds"] >= 0 and info["started"] and info["finished"]
    assert info["inputs"] == inputs_digest({"k": 1})
    assert run.is_done("mine") and run.is_done("mine", {"k": 1})
    assert not run.is_done("mine", {"k": 2})  # other inputs: not done, run it again


def test_failed_stage_is_recorded_and_reraised(tmp_path):
    run = Run.create(make_spec(tmp_path), "r1")
    with pytest.raises(ValueError):
        with run.stage("train"):
            raise ValueError("boom")
    info = Run.open(run.spec, "r1").stage_info("train")
    assert info["status"] == "failed" and info["error"] == "ValueError: boom"
    assert not run.is_done("train")


def test_latest_and_all(tmp_path):
    spec = make_spec(tmp_path)
    assert Run.latest(spec) is None and Run.all(spec) == []
    old = Run.create(spec, "20250101-000000-aaaa")
    with old.stage("train"):
        pass
    Run.create(spec, "20250102-000000-bbbb")
    assert Run.latest(spec).id == "20250102-000000-bbbb"
    assert Run.latest(spec, with_stage="train").id == old.id
    assert Run.latest(spec, with_stage="index") is None
    assert [r.id for r in Run.all(spec)] == [old.id, "20250102-000000-bbbb"]


def test_json_artifacts(tmp_path):
    run = Run.create(make_spec(tmp_path), "r1")
    path = run.write_json("per_query/base-test.json", {"q1": {"ndcg@10": 1.0}})
    assert path == run.dir / "per_query" / "base-test.json"
    assert run.read_json("per_query/base-test.json") == {"q1": {"ndcg@10": 1.0}}
    assert run.read_json("absent.json") is None
    assert not list(run.dir.rglob("*.tmp"))  # written atomically, nothing left behind


def test_runs_of_different_specs_do_not_mix(tmp_path):
    a = make_spec(tmp_path)
    b = validate_dict({"version": 1, "name": "other", "data": {"corpus": {"path": "c.jsonl"}},
                       "runtime": {"runs": str(tmp_path / "runs")}}, "test")
    Run.create(a, "r1")
    assert Run.latest(b) is None


@pytest.mark.parametrize("bad", ["../../x", "/abs/path", "a/b", "..", ".hidden", "-flag", "", "x" * 65, "a b", "é"])
def test_run_ids_that_are_paths_are_refused_before_anything_is_written(tmp_path, bad):
    from vectune.errors import InputError

    spec = make_spec(tmp_path)
    with pytest.raises(InputError, match="is not a run id") as info:
        Run.create(spec, bad)
    assert info.value.exit_code == 2
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


def test_a_corrupt_manifest_names_the_file_and_line(tmp_path):
    from vectune.errors import DataError

    spec = make_spec(tmp_path)
    Run.create(spec, "r1")
    manifest = tmp_path / "runs" / "demo" / "r1" / "manifest.json"
    manifest.write_text('{"run_id": "r1",\n "stages": {')
    with pytest.raises(DataError, match=r"manifest\.json:2: not a valid run manifest") as info:
        Run.open(spec, "r1")
    assert info.value.exit_code == 2
    with pytest.raises(DataError, match="not a valid run manifest"):
        Run.create(spec, "r1")  # resuming it is refused the same way
    Run.create(spec, "r2")
    assert [r.id for r in Run.all(spec)] == ["r2"]  # listing skips the broken run (with a warning)
    assert Run.latest(spec).id == "r2"


def test_a_runs_folder_that_is_a_file_is_named(tmp_path, monkeypatch):
    from vectune.errors import InputError

    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.setenv("VECTUNE_RUNS", str(tmp_path / "afile"))
    with pytest.raises(InputError, match=r"\$VECTUNE_RUNS: .*afile is a file, not a folder for runs"):
        Run.create(make_spec(tmp_path), "r1")
