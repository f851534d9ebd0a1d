"""The job submission client (`vectune.jobs`): what `vectune submit` ships, and
`runtime.storage`. No cluster needed (a few seconds): a refused address stands in for one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vectune import jobs
from vectune.errors import SpecError
from vectune.runs import Run
from vectune.spec import Spec, load_spec, validate_dict

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
VECTUNE = str(Path(sys.executable).parent / "vectune")


def _spec_dict(tiny_beir, **runtime) -> dict:
    data = dict(tiny_beir.spec)
    data["runtime"] = {**data["runtime"], **runtime}
    return data


# -- runtime.storage ----------------------------------------------------------------------------
def test_runs_go_to_storage(tiny_beir, tmp_path, monkeypatch):
    shared = tmp_path / "shared-mount"
    tiny_beir.spec_path.write_text(yaml.safe_dump(_spec_dict(tiny_beir, storage=str(shared))))
    spec = load_spec(tiny_beir.spec_path)
    assert spec.runs_root() == str(shared)
    run = Run.create(spec, "r1")
    assert run.dir == shared / "tiny" / "r1" and (run.dir / "manifest.json").is_file()
    assert not Path(tiny_beir.spec["runtime"]["runs"]).exists()  # `runs` lost to `storage`
    monkeypatch.setenv("VECTUNE_RUNS", str(tmp_path / "override"))
    assert load_spec(tiny_beir.spec_path).runs_root() == str(tmp_path / "override")


@pytest.mark.parametrize("storage, message", [
    ("shared/runs", "absolute path"),
    ("s3://bucket/runs", "object-store URIs are not supported"),
])
def test_storage_must_be_an_absolute_shared_path(tiny_beir, storage, message):
    with pytest.raises(SpecError) as err:
        validate_dict(_spec_dict(tiny_beir, storage=storage), "spec.yaml")
    assert [p.path for p in err.value.problems] == ["runtime.storage"]
    assert message in err.value.problems[0].message


# -- the spec the cluster reads --------------------------------------------------------------
def test_cluster_spec_is_absolute_and_joins_the_cluster(tiny_beir, tmp_path, monkeypatch):
    model = tiny_beir.root / "models" / "mine"
    model.mkdir(parents=True)
    (model / "modules.json").write_text("[]")
    data = _spec_dict(tiny_beir)
    data["model"] = {"base": "models/mine"}
    tiny_beir.spec_path.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    spec = load_spec(tiny_beir.spec_path)
    out = jobs.cluster_spec(spec)
    assert out["runtime"]["address"] == "auto"
    assert out["runtime"]["storage"] == spec.runs_root() == str(tmp_path / "runs")
    assert out["data"]["corpus"]["path"] == str(tiny_beir.root / "corpus.jsonl")
    assert out["data"]["splits"]["test"]["path"] == str(tiny_beir.root / "qrels" / "test.tsv")
    assert out["model"]["base"] == str(model)
    # it is a valid spec that reads the same data from anywhere
    elsewhere = validate_dict(out, "rendered")
    assert elsewhere.resolve(elsewhere.data.corpus.path) == str(tiny_beir.root / "corpus.jsonl")
    assert "storage" in jobs.storage_warning(spec)
    data["runtime"]["storage"] = "/mnt/shared/runs"
    assert jobs.storage_warning(validate_dict(data, "x")) is None


# -- the runtime environment and entrypoint ---------------------------------------------------
def test_working_dir_mode_ships_pipelines_spec_and_package(tiny_beir):
    spec_yaml = yaml.safe_dump(jobs.cluster_spec(load_spec(tiny_beir.spec_path)))
    folder = jobs.stage("evaluate", spec_yaml)
    try:
        assert {p.name for p in (folder / "pipelines").glob("*.py")} >= {"_common.py", "evaluate.py",
                                                                         "finetune.py", "reindex.py"}
        assert yaml.safe_load((folder / jobs.SPEC_FILE).read_text())["runtime"]["address"] == "auto"
        env = jobs.runtime_env(working_dir=folder, spec_yaml=spec_yaml, pip=["rich"])
        assert env["working_dir"] == str(folder)
        assert env["py_modules"] == [str(REPO / "src" / "vectune")]
        assert {".venv", ".git", "runs", "benchmarks/results"} <= set(env["excludes"])
        assert env["pip"] == ["rich"]
    finally:
        import shutil

        shutil.rmtree(folder)
    assert jobs.entrypoint("evaluate", run_id="r 1") == "python pipelines/evaluate.py --spec vectune-spec.yaml --run-id 'r 1'"


def test_image_mode_sends_the_spec_in_the_environment():
    env = jobs.runtime_env(working_dir=None, spec_yaml="version: 1\n", image="registry/vectune:1")
    assert env == {"image_uri": "registry/vectune:1", "env_vars": {jobs.SPEC_ENV: "version: 1\n"}}
    assert jobs.entrypoint("reindex", image_workdir="/app", model="/m") == \
        "cd /app && python pipelines/reindex.py --model /m"
    with pytest.raises(jobs.SubmitError, match="--pip cannot be combined with --image"):
        jobs.runtime_env(working_dir=None, spec_yaml="", image="img", pip=["x"])


def test_full_reindex_reaches_the_job_and_only_the_reindex_pipeline_takes_it(tmp_path):
    assert jobs.entrypoint("reindex", full=True) == "python pipelines/reindex.py --spec vectune-spec.yaml --full"
    assert "--full" not in jobs.entrypoint("reindex")  # the scheduled default: sync in place when it can
    spec = Spec.model_validate({"version": 1, "name": "docs", "data": {"corpus": {"path": "c.jsonl"}},
                                "runtime": {"runs": str(tmp_path)}})
    with pytest.raises(jobs.SubmitError, match="--full applies to the reindex pipeline"):
        jobs.submit(spec, address="http://127.0.0.1:1", pipeline="finetune", full=True)


def test_no_pipelines_folder_is_a_clear_error():
    with pytest.raises(jobs.SubmitError, match="pipelines/nope.py not found"):
        jobs.project_root("nope")


def test_exit_codes():
    assert jobs.exit_code({"status": "SUCCEEDED", "driver_exit_code": 0}) == 0
    assert jobs.exit_code({"status": "FAILED", "driver_exit_code": 3}) == 3  # gate failed
    assert jobs.exit_code({"status": "FAILED", "driver_exit_code": None}) == 1
    assert jobs.exit_code({"status": "STOPPED", "driver_exit_code": None}) == 1


# -- addresses and tokens ------------------------------------------------------------------
def test_address_and_token_discovery(monkeypatch, tmp_path):
    for var in ("RAY_ADDRESS", "VECTUNE_RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(jobs.SubmitError, match="--address"):
        jobs.resolve_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "http://ray:8265")
    assert jobs.resolve_address(None) == "http://ray:8265"
    monkeypatch.setenv("VECTUNE_RAY_ADDRESS", "http://vectune:8265")
    assert jobs.resolve_address(None) == "http://vectune:8265"
    assert jobs.resolve_address("http://given:8265") == "http://given:8265"

    assert jobs.token_source() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("secret-in-a-file")
    assert jobs.token_source() == "~/.ray/auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret-in-env")
    assert jobs.token_source() == "RAY_AUTH_TOKEN"  # a name, never the token
    jobs.enable_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_unreachable_cluster_is_a_short_message(tiny_beir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run([VECTUNE, "submit", str(tiny_beir.spec_path), "--address", "http://127.0.0.1:9",
                           "--pipeline", "evaluate"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "127.0.0.1:9" in proc.stderr and "Traceback" not in proc.stderr


# -- the pipelines' own error contract ----------------------------------------------------------
def test_pipeline_reports_a_bad_spec_with_exit_code_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\ndata: {corpus: {path: c.jsonl}}\nruntime: {storage: relative/dir}\n")
    proc = subprocess.run([PYTHON, str(REPO / "pipelines" / "evaluate.py"), "--spec", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "runtime.storage" in proc.stderr and "Traceback" not in proc.stderr

    env = {**os.environ, jobs.SPEC_ENV: "version: 1\nname: x\n"}
    proc = subprocess.run([PYTHON, str(REPO / "pipelines" / "reindex.py")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert f"${jobs.SPEC_ENV}" in proc.stderr and "data: required field is missing" in proc.stderr
