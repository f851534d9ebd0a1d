"""Reliability drills as a user meets them: servers that never answer or drop the
connection, credentials that must never show, addresses where nothing listens.

The "servers" here are plain sockets on 127.0.0.1, not Qdrant or Ray: a real server that
hangs or drops on cue cannot be had on this machine, and what is under test is vectune's
side of the wire (bounded waits, the error, nothing leaked, the alias untouched)."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from testdata import VECTUNE, cli_env, vectune

SECRET = "pw-vectune-9d1c44e0"
KEY = "sk-vectune-KEY-51b2e7"
KEY_ENV = "VECTUNE_TEST_QDRANT_KEY"




class Socket:
    """A listening socket on 127.0.0.1 that `hang`s (accepts, never reads or answers) or
    `drop`s (reads the request, then closes without a reply)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.mode == "hang":
                self.held.append(conn)
            else:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                except OSError:
                    pass
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def server(request):
    s = Socket(request.param)
    yield s
    s.close()


def _spec(tiny_beir, tmp_path, **sections) -> Path:
    mapping = yaml.safe_load(tiny_beir.spec_path.read_text())
    for key, value in sections.items():
        mapping[key] = {**mapping.get(key, {}), **value}
    mapping.setdefault("runtime", {})["runs"] = str(tmp_path / "runs")
    path = tiny_beir.root / "spec-drill.yaml"
    path.write_text(yaml.safe_dump(mapping))
    return path


def _everything_written(root: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("server", ["hang", "drop"], indirect=True)
def test_qdrant_that_hangs_or_drops_fails_in_bounded_time_and_leaks_nothing(tiny_beir, tmp_path, server):
    """Drill (c): a Qdrant URL with credentials and an API key; the server accepts and then
    never answers, or drops each request. reindex, search, collections and rollback each
    end within their timeouts with a clear error; neither secret appears anywhere."""
    url = f"http://admin:{SECRET}@127.0.0.1:{server.port}/?api_key={SECRET}"
    spec = _spec(tiny_beir, tmp_path, index={"qdrant": {"url": url, "api_key_env": KEY_ENV, "timeout": 2,
                                                         "retries": 1}})
    env = cli_env(**{KEY_ENV: KEY})
    seen = ""
    for command in (("reindex", spec, "--run-id", "drill"), ("search", spec, "a query"), ("collections", spec),
                    ("rollback", spec)):
        start = time.monotonic()
        out = vectune(*command, "-v", env=env, timeout=120)
        took = time.monotonic() - start
        assert out.returncode == 1, (command, out.stderr[-2000:])
        assert took < 60, f"{command[0]} took {took:.0f} s against a server that never answers"
        assert "Traceback" not in out.stderr
        assert f"Qdrant at http://***@127.0.0.1:{server.port}" in out.stderr, out.stderr[-2000:]
        seen += out.stdout + out.stderr
    assert server.accepted >= 2  # the client did get through to the socket, and retried
    assert SECRET not in seen and KEY not in seen
    written = _everything_written(tmp_path / "runs")
    assert "drill" in written and SECRET not in written and KEY not in written
    manifest = json.loads((tmp_path / "runs" / "tiny" / "drill" / "manifest.json").read_text())
    assert manifest["stages"]["reindex"]["status"] == "failed"
    assert manifest["spec"]["index"]["qdrant"]["url"] == f"http://***@127.0.0.1:{server.port}/?api_key=***"


def test_ray_address_where_nothing_listens_fails_fast(tiny_beir, tmp_path):
    spec = _spec(tiny_beir, tmp_path, runtime={"address": "127.0.0.1:9"})
    start = time.monotonic()
    out = vectune("evaluate", spec, "--json", timeout=120)
    assert time.monotonic() - start < 60
    assert out.returncode == 1 and "Traceback" not in out.stderr
    error = json.loads(out.stdout)
    assert error["kind"] == "ClusterError" and "runtime.address 127.0.0.1:9: nothing answers" in error["error"]


@pytest.mark.parametrize("server", ["hang"], indirect=True)
def test_ray_address_that_never_answers_gives_up_after_the_connect_timeout(tiny_beir, tmp_path, server):
    spec = _spec(tiny_beir, tmp_path, runtime={"address": f"127.0.0.1:{server.port}", "connect_timeout": 3})
    start = time.monotonic()
    out = vectune("evaluate", spec, timeout=120)
    assert time.monotonic() - start < 45
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "did not answer within 3 s (runtime.connect_timeout)" in out.stderr


@pytest.mark.parametrize("server", ["hang"], indirect=True)
def test_job_server_that_never_answers_is_bounded(server, monkeypatch):
    from typer.testing import CliRunner

    from vectune import jobs
    from vectune.cli import app

    monkeypatch.setattr(jobs, "REQUEST_TIMEOUT", 3.0)
    start = time.monotonic()
    result = CliRunner().invoke(app, ["jobs", "list", "--address", f"http://127.0.0.1:{server.port}", "--json"])
    assert time.monotonic() - start < 30
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["kind"] == "ClusterError" and "no answer within 3 s" in payload["error"]


# -- drill (e): collections that cannot serve the alias's readers ----------------------------
def _stamped(client, name: str, size: int, model: str, *, distance: str = "Cosine", stamped_size: int | None = None):
    """A vectune-stamped collection built by hand (no Ray: the stamp and the vector shape are
    what is under test), with a few random points."""
    import numpy as np
    from qdrant_client import models

    from vectune.embed import model_fingerprint
    from vectune.index import collections as cols

    client.create_collection(name, vectors_config=models.VectorParams(size=size, distance=models.Distance(distance)))
    rng = np.random.default_rng(0)
    client.upsert(name, [models.PointStruct(id=i, vector=rng.normal(size=size).tolist(), payload={"doc_id": f"d{i}"})
                         for i in range(1, 5)])
    cols.write_stamp(client, name, {
        "format": 1, "spec": "tiny", "base": "tiny", "run_id": name.split("__")[1], "model_path": model,
        "model_fingerprint": model_fingerprint(model), "dimension": stamped_size or size,
        "distance": distance.lower(), "state": "ready", "created": cols.now()})


def test_rollback_onto_an_incompatible_collection_and_search_of_a_mismatched_one_are_refused(tiny_beir, tmp_path):
    from typer.testing import CliRunner

    from vectune.cli import app
    from vectune.embed import resolve_model
    from vectune.index import collections as cols
    from vectune.index import connect
    from vectune.spec import load_spec

    store = tmp_path / "qdrant"
    spec_path = _spec(tiny_beir, tmp_path, index={"qdrant": {"path": str(store)}})
    spec = load_spec(spec_path)
    minilm = resolve_model("all-MiniLM-L6-v2")
    client = connect(spec)
    try:
        _stamped(client, "tiny__wide", 768, minilm)  # 768-d vectors, stamped model gives 384-d
        _stamped(client, "tiny__dot", 384, minilm, distance="Dot")
        _stamped(client, "tiny__live", 384, minilm)
        cols.swap_alias(client, "tiny", "tiny__live")
    finally:
        client.close()

    def cli(*args):
        return CliRunner().invoke(app, [*map(str, args)])

    for target, needle in (("wide", "readers of the alias send 384-d cosine queries"),
                           ("dot", "tiny__dot holds 384-d dot vectors")):
        refused = cli("rollback", spec_path, "--to", target, "--json")
        assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output
        assert needle in json.loads(refused.stdout)["error"]
    refused = cli("rollback", spec_path)  # the automatic choice skips both, then says why
    assert refused.exit_code == 2 and "no previous collection of alias 'tiny' can serve its readers" in refused.output
    client = connect(spec)
    try:
        assert cols.live_collection(client, "tiny") == "tiny__live"  # the alias never moved
        cols.swap_alias(client, "tiny", "tiny__wide")  # as an older vectune's rollback left it
    finally:
        client.close()
    mismatched = cli("search", spec_path, "a query", "--json")
    assert mismatched.exit_code == 2 and "Traceback" not in mismatched.output, mismatched.output
    assert "holds vectors of size 768" in json.loads(mismatched.stdout)["error"]


@pytest.mark.ray
def test_nothing_is_written_outside_the_runs_folder(tiny_beir, tmp_path):
    """`vectune evaluate` from another working folder, with a fresh HOME: every file it
    writes lands under runtime.runs (Ray's own files aside: its session under /tmp/ray and
    the cluster auth token it makes in ~/.ray)."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    spec = _spec(tiny_beir, tmp_path)
    before = {p for p in tiny_beir.root.rglob("*")}
    env = cli_env(HOME=str(home))
    env.pop("XDG_CACHE_HOME", None)
    env.pop("MPLCONFIGDIR", None)
    out = subprocess.run([VECTUNE, "evaluate", str(spec), "--run-id", "outside"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "runs" / "tiny" / "outside" / "metrics.json").is_file()
    assert sorted(p.relative_to(home) for p in home.rglob("*") if ".ray" not in p.parts) == []
    assert sorted(p.relative_to(tmp_path) for p in work.rglob("*")) == []
    assert {p for p in tiny_beir.root.rglob("*")} == before  # nothing beside the data either
