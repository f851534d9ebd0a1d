"""The CLI conventions users expect: --version, shell completion, choices in --help,
`--set key=value`, `vectune submit` spelled like `ray job submit`, short options, and one
spelling of each option across the CLI and the Ray job entrypoints in pipelines/."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vectune import jobs
from vectune.cli import app
from vectune.runs import Run
from vectune.spec import load_spec, parse_overrides
from vectune.stages import PIPELINES, STAGES

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VECTUNE = str(BIN / "vectune")


def invoke(*args: str):
    # wide enough that rich's --help table never truncates an option name
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})


def options(help_text: str) -> set[str]:
    """The long and short option names a --help text lists."""
    return set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", help_text))


# -- --version and completion ---------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag):
    result = invoke(flag)
    assert result.exit_code == 0
    assert result.output.strip() == f"vectune {version('vectune')}"


def test_shell_completion_is_on_and_completes_choices():
    assert "--install-completion" in invoke("--help").output
    env = {**os.environ, "_VECTUNE_COMPLETE": "complete_bash", "COMP_WORDS": "vectune run spec.yaml --only ",
           "COMP_CWORD": "4"}
    proc = subprocess.run([VECTUNE], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == list(STAGES)


# -- choices ---------------------------------------------------------------------------------
def test_help_lists_stage_and_pipeline_choices():
    run_help = invoke("run", "--help").output
    for option in ("--from", "--only"):
        assert option in run_help
    assert "|".join(STAGES) in re.sub(r"[\s│]+", "", run_help)
    assert "|".join(PIPELINES) in re.sub(r"[\s│]+", "", invoke("submit", "--help").output)


def test_unknown_stage_is_refused_while_parsing(tiny_beir):
    result = invoke("run", tiny_beir.spec_path, "--only", "trian")
    assert result.exit_code == 2
    assert "'trian' is not one of" in result.output and "'train'" in result.output


# -- --set -----------------------------------------------------------------------------------
def test_set_overrides_change_the_spec_and_its_hash(tiny_beir):
    plain = json.loads(invoke("validate", tiny_beir.spec_path, "--json").output)
    result = invoke("validate", tiny_beir.spec_path, "--set", "train.epochs=3", "--set",
                    "evaluate.metrics=[ndcg@10, recall@100, map@10]", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["hash"] != plain["hash"]
    rendered = json.loads(invoke("render", tiny_beir.spec_path, "--set", "train.epochs=3", "--json").output)
    assert rendered["train"]["epochs"] == 3


def test_set_is_validated_like_the_file(tiny_beir):
    result = invoke("validate", tiny_beir.spec_path, "--set", "train.epochs=-1", "--set", "train.epoch=2")
    assert result.exit_code == 2
    assert "train.epochs: Input should be greater than 0 (set with --set train.epochs=-1)" in result.output
    assert "train.epoch: unknown key (not part of this section) (set with --set train.epoch=2)" in result.output
    result = invoke("validate", tiny_beir.spec_path, "--set", "train.epochs")
    assert result.exit_code == 2 and "expected KEY=VALUE" in result.output


def test_set_is_recorded_in_the_manifest(tiny_beir):
    overrides = parse_overrides(["train.epochs=3", "mine.num_negatives=2"])
    spec = load_spec(tiny_beir.spec_path, overrides)
    run = Run.create(spec, "r-set")
    manifest = json.loads((run.dir / "manifest.json").read_text())
    assert manifest["overrides"] == {"train.epochs": 3, "mine.num_negatives": 2}
    assert manifest["spec"]["train"]["epochs"] == 3
    assert manifest["spec_hash"] == spec.digest() != load_spec(tiny_beir.spec_path).digest()


# -- submit mirrors `ray job submit` ---------------------------------------------------------
SHARED_WITH_RAY = {"--address", "--submission-id", "--runtime-env", "--runtime-env-json", "--metadata-json",
                   "--working-dir", "--entrypoint-num-cpus", "--entrypoint-num-gpus", "--entrypoint-memory",
                   "--entrypoint-resources", "--headers", "--verify", "--no-wait", "-v", "--verbose"}


def test_submit_has_ray_job_submit_flags():
    ray_help = subprocess.run([str(BIN / "ray"), "job", "submit", "--help"], capture_output=True, text=True,
                              timeout=120)
    assert ray_help.returncode == 0, ray_help.stderr
    assert SHARED_WITH_RAY <= options(ray_help.stdout)  # the names are Ray's own
    assert SHARED_WITH_RAY <= options(invoke("submit", "--help").output)


def test_submit_waits_by_default_like_ray():
    import inspect

    assert inspect.signature(jobs.submit).parameters["wait"].default is True
    assert "[default: wait]" in re.sub(r"[\s│]+", " ", invoke("submit", "--help").output)


def test_submit_flags_reach_the_cluster_client(tiny_beir):
    # a refused address stands in for a cluster: the options parse and the job is prepared
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run([VECTUNE, "submit", str(tiny_beir.spec_path), "--address", "http://127.0.0.1:9",
                           "--pipeline", "evaluate", "--submission-id", "vectune-test-1", "--runtime-env-json",
                           '{"env_vars": {"A": "1"}}', "--metadata-json", '{"team": "search"}',
                           "--entrypoint-num-cpus", "1", "--entrypoint-num-gpus", "0", "--working-dir", str(REPO),
                           "--no-wait", "--set", "train.epochs=2"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr  # the cluster is unreachable, nothing else is wrong
    assert "127.0.0.1:9" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("flag, value, message", [
    ("--runtime-env-json", "[1]", "must be a JSON object"),
    ("--metadata-json", "{nope", "not valid JSON"),
])
def test_submit_bad_json_is_a_usage_error(tiny_beir, flag, value, message):
    result = invoke("submit", tiny_beir.spec_path, "--address", "http://127.0.0.1:9", flag, value)
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize("args, message", [
    (["--entrypoint-resources", "[1]"], "--entrypoint-resources"),
    (["--headers", "{nope"], "--headers"),
    (["--verify", "/no/such/ca.pem"], "--verify"),
    (["--runtime-env", "/no/such/env.yaml"], "/no/such/env.yaml"),
    (["--runtime-env", "ENV", "--runtime-env-json", "{}"], "not both"),
])
def test_submit_bad_connection_options_are_usage_errors_naming_the_option(tiny_beir, tmp_path, args, message):
    env_file = tmp_path / "env.yaml"
    env_file.write_text("env_vars: {A: '1'}\n")
    args = [str(env_file) if a == "ENV" else a for a in args]
    result = invoke("submit", tiny_beir.spec_path, "--address", "http://127.0.0.1:9", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "No such option" not in result.output  # refused for its value, not as an unknown flag


def test_runtime_env_file_must_hold_a_mapping(tiny_beir, tmp_path):
    env_file = tmp_path / "env.yaml"
    env_file.write_text("- pip\n")
    result = invoke("submit", tiny_beir.spec_path, "--address", "http://127.0.0.1:9", "--runtime-env", env_file)
    assert result.exit_code == 2 and "must hold a mapping" in result.output


class _JobServer:
    """A stand-in for the Ray dashboard's HTTP job API (stdlib http.server on loopback): it
    answers the version check and an empty job list, and keeps each request's headers, so a
    test sees what `--headers` puts on the wire without a cluster."""

    def __init__(self):
        import http.server
        import threading

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                seen.append((self.path, dict(self.headers)))
                body = {"/api/version": {"version": "4", "ray_version": "2.60.0", "ray_commit": "x"},
                        "/api/jobs/": []}.get(self.path.split("?")[0])
                payload = json.dumps(body).encode()
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_headers_reach_the_job_server_on_every_request():
    server = _JobServer()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        proc = subprocess.run([VECTUNE, "jobs", "list", "--address", server.url, "--json",
                               "--headers", '{"X-Vectune-Test": "search-team"}', "--verify", "false"],
                              env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    paths = [path for path, _ in server.seen]
    assert "/api/version" in paths and any(p.startswith("/api/jobs/") for p in paths)
    assert all(headers.get("X-Vectune-Test") == "search-team" for _, headers in server.seen)


def test_verify_takes_booleans_or_a_ca_path(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert jobs.parse_verify("True") is True and jobs.parse_verify("false") is False
    assert jobs.parse_verify(str(ca)) == str(ca)
    with pytest.raises(jobs.SubmitError, match="--verify"):
        jobs.parse_verify(str(tmp_path / "missing.pem"))


def test_runtime_env_json_is_merged_not_replacing_what_vectune_ships(tiny_beir):
    env = jobs.runtime_env(working_dir=REPO, spec_yaml="", pip=["rich"],
                           extra={"env_vars": {"A": "1"}, "pip": ["tqdm"], "config": {"setup_timeout_seconds": 60}})
    assert env["working_dir"] == str(REPO) and env["env_vars"] == {"A": "1"}
    assert env["pip"] == ["rich", "tqdm"] and env["config"] == {"setup_timeout_seconds": 60}
    with pytest.raises(jobs.SubmitError, match="working_dir"):
        jobs.runtime_env(working_dir=REPO, spec_yaml="", extra={"working_dir": "/elsewhere"})
    with pytest.raises(jobs.SubmitError, match=jobs.SPEC_ENV):
        jobs.runtime_env(working_dir=None, spec_yaml="x", image="img", extra={"env_vars": {jobs.SPEC_ENV: "y"}})
    with pytest.raises(jobs.SubmitError, match="no pipelines/evaluate.py"):
        jobs.project_root("evaluate", REPO / "src")
    assert jobs.project_root("evaluate", REPO) == REPO


# -- short options and one spelling everywhere -------------------------------------------------
@pytest.mark.parametrize("command, short, long", [
    ("search", "-k", "--top-k"), ("search", "-m", "--model"), ("evaluate", "-m", "--model"),
    ("reindex", "-m", "--model"), ("submit", "-m", "--model"), ("report", "-o", "--out"), ("run", "-v", "--verbose"),
])
def test_short_options(command, short, long):
    listed = options(invoke(command, "--help").output)
    assert {short, long} <= listed
    assert "--k" not in listed


#: each Ray job entrypoint and the CLI command that does the same work
ENTRYPOINTS = {"finetune": "run", "reindex": "reindex", "evaluate": "evaluate"}


@pytest.mark.parametrize("pipeline", sorted(ENTRYPOINTS))
def test_pipelines_spell_options_as_the_cli(pipeline):
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / f"{pipeline}.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    theirs = options(proc.stdout) - {"-h", "--help", "--spec"}  # the CLI takes the spec as its argument
    ours = options(invoke(ENTRYPOINTS[pipeline], "--help").output)
    assert theirs and theirs <= ours, f"pipelines/{pipeline}.py spells {sorted(theirs - ours)} differently"
