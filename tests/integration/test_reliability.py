"""Reliability drills as a user meets them: servers that never answer or drop the
connection, credentials that must never show, addresses where nothing listens.

The "servers" here are plain sockets on 127.0.0.1, not Qdrant or Ray: a real server that
hangs or drops on cue cannot be had on this machine, and what is under test is vectune's
side of the wire (bounded waits, the error, nothing leaked, the alias untouched)."""

from __future__ import annotations

import contextlib
import json
import os
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
    spec = _spec(tiny_beir, tmp_path, index={"qdrant": {"url": url, "api_key_env": KEY_ENV, "timeout": 1,
                                                         "retries": 1}})  # CI time: 1 s a try
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
def _stamped(store, name: str, size: int, model: str, *, distance: str = "Cosine", stamped_size: int | None = None):
    """A vectune-stamped collection built by hand (no Ray: the stamp and the vector shape are
    what is under test), with a few random points."""
    import numpy as np

    from vectune.embed import model_fingerprint
    from vectune.index import collections as cols
    from vectune.index.points import point_id
    from vectune.index.store import Layout

    store.create(name, Layout(size=size, distance=distance.lower()), stamp={})
    rng = np.random.default_rng(0)
    store.upsert(name, [point_id(f"d{i}") for i in range(1, 5)], rng.normal(size=(4, size)).astype(np.float32),
                 [{"doc_id": f"d{i}"} for i in range(1, 5)])
    cols.write_stamp(store, name, {
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


# -- drills on the embedded engine (Qdrant Edge), with real processes and real kills -----------
_SWAP = """
import sys
from vectune.index.store import Target
from vectune.index.engines import open_store

store = open_store(Target(path=sys.argv[1]))
if sys.argv[2] == "loop":  # swap back and forth until killed, saying so after the first round
    ready = True
    while True:
        for name in ("docs__a", "docs__b"):
            store.swap_alias("docs", name)
        if ready:
            open(sys.argv[3], "w").close()
            ready = False
else:
    store.swap_alias("docs", sys.argv[2])
"""

_READ = """
import json, sys, time
from pathlib import Path
from vectune.index.store import Target
from vectune.index.engines import open_store

seen = {}
stop = Path(sys.argv[2])
while not stop.exists():
    store = open_store(Target(path=sys.argv[1]))  # a reader resolves the alias on every open
    try:
        name = store.alias("docs")
    except Exception as exc:
        name = f"error: {type(exc).__name__}: {exc}"
    store.close()
    seen[str(name)] = seen.get(str(name), 0) + 1
print(json.dumps(seen))
"""


def _two_versions(folder: Path) -> None:
    from vectune.index.store import Layout, Target
    from vectune.index.engines import open_store

    store = open_store(Target(path=str(folder)))
    try:
        for name in ("docs__a", "docs__b"):
            store.create(name, Layout(size=4, distance="cosine"), stamp={"base": "docs"})
        store.swap_alias("docs", "docs__a")
    finally:
        store.close()


def _python(code: str, *args, **popen) -> subprocess.Popen:
    import sys

    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=popen.pop("env", cli_env()),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_a_writer_killed_mid_alias_swap_leaves_the_old_alias_and_the_next_swap_succeeds(tmp_path):
    """Drill: the writer is SIGKILLed after writing and fsyncing the new alias record, before the
    rename that publishes it (a fault point pauses it exactly there): readers keep the old
    version, and the next writer clears the leftover and moves the alias."""
    import os
    import signal

    from vectune.index.store import Target

    from vectune.index.engines import open_store

    folder = tmp_path / "qdrant"
    _two_versions(folder)
    marker, faults = tmp_path / "paused", tmp_path / "faults.json"
    faults.write_text(json.dumps({"index.alias": {"marker": str(marker)}}))
    writer = _python(_SWAP, folder, "docs__b", env=cli_env(VECTUNE_FAULTS=str(faults)))
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert writer.poll() is None, writer.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    leftovers = list((folder / "aliases").glob(".docs.json.*.tmp"))
    assert len(leftovers) == 1 and json.loads(leftovers[0].read_text())["collection"] == "docs__b"  # written, unpublished
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)

    reader = open_store(Target(path=str(folder)))
    try:
        assert reader.alias("docs") == "docs__a"
    finally:
        reader.close()
    again = _python(_SWAP, folder, "docs__b")
    assert again.wait(timeout=60) == 0, again.communicate()
    assert not list((folder / "aliases").glob(".*.tmp"))
    reader = open_store(Target(path=str(folder)))
    try:
        assert reader.alias("docs") == "docs__b"
    finally:
        reader.close()


def test_readers_see_the_old_or_the_new_alias_never_neither_while_writers_are_killed(tmp_path):
    """Drill: a writer swaps the alias back and forth as fast as it can and is SIGKILLed at a random
    moment of its swapping, 8 times (a new one each time); a reader in another process resolves
    the alias all along: every read names one of the two versions."""
    import os
    import random
    import signal

    folder = tmp_path / "qdrant"
    _two_versions(folder)
    stop = tmp_path / "stop"
    reader = _python(_READ, folder, stop)
    rng = random.Random(7)
    try:
        for i in range(8):
            swapping = tmp_path / f"swapping-{i}"
            writer = _python(_SWAP, folder, "loop", swapping)
            deadline = time.monotonic() + 120
            while not swapping.exists():
                assert writer.poll() is None and time.monotonic() < deadline, writer.communicate()
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))  # dozens of swaps a second: killed in one of them
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait(timeout=30)
    finally:
        stop.write_text("")
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err[-2000:]
    seen = json.loads(out)
    assert set(seen) == {"docs__a", "docs__b"}, seen  # never None, never an error, never a torn record
    assert sum(seen.values()) > 100


def test_edge_dies_of_sigbus_on_a_full_disk(tmp_path):
    """Why vectune checks free space before every Edge write: the engine writes through memory-
    mapped files, and on a full disk the process is killed (SIGBUS) instead of getting an error.
    Shown on qdrant-edge-py itself in a small tmpfs. If this test fails, Edge now reports the full
    disk as an error: the free-space guard in vectune.index.edge can be revisited."""
    import signal

    with _tmpfs(tmp_path / "small", "16m") as small:
        code = """
import sys, uuid
import numpy as np
import qdrant_edge as qe

shard = qe.EdgeShard.create(sys.argv[1], qe.EdgeConfig(vectors={"dense": qe.EdgeVectorParams(size=384, distance=qe.Distance.Cosine)}))
x = np.random.default_rng(0).normal(size=(1000, 384)).astype(np.float32)
for a in range(0, 50_000, 1000):
    shard.update(qe.UpdateOperation.upsert_points([qe.Point(str(uuid.uuid4()), {"dense": v.tolist()}) for v in x]))
print("no error")
"""
        out = _python(code, small / "shard")
        _, err = out.communicate(timeout=120)
    assert out.returncode == -signal.SIGBUS, (out.returncode, err[-1000:])


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str):
    """A tmpfs of `size` mounted at `folder` (root only; the test is skipped elsewhere): a disk
    that really fills up."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture(scope="module")
def edge_disk(tmp_path_factory):
    with _tmpfs(tmp_path_factory.mktemp("edge-disk") / "disk", "256m") as disk:
        yield disk


N_DRILL = 40


@pytest.fixture(scope="module")
def drilled(make_slice, tmp_path_factory, edge_disk, random_model):
    """A 40-document slice whose embedded store lives on a 256 MiB tmpfs, version v1 built and
    live by `vectune reindex` in its own process. Every vector is verified (verify_sample = the
    corpus), batches of 4 points. A random-weight model: the drills are about the store and
    the alias, never about what ranks first (CI time: each command is a process of its own)."""
    sliced = make_slice(tmp_path_factory.mktemp("drill"), n_docs=N_DRILL, n_queries=8, seed=9, spec={
        "model": {"max_seq_length": 64, "base": random_model},
        "index": {"batch_size": 4, "embed_batch_size": 16, "keep": 3, "verify_sample": N_DRILL, "lease_ttl": 4,
                  "qdrant": {"path": str(edge_disk / "qdrant")}}})
    out = vectune("reindex", sliced.spec_path, "--run-id", "v1", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    return sliced


def _live(sliced) -> str | None:
    from vectune.index import connect
    from vectune.spec import load_spec

    store = connect(load_spec(sliced.spec_path))
    try:
        return store.alias("slice")
    finally:
        store.close()


def _paused(sliced, tmp: Path, run_id: str, point: dict, *args) -> tuple[subprocess.Popen, Path, Path]:
    """`vectune reindex --full` for `run_id`, paused at a fault point (`point`: its settings
    without marker and release); returns (process, marker, release)."""
    marker, release, faults = tmp / f"{run_id}.paused", tmp / f"{run_id}.release", tmp / f"{run_id}.faults"
    name, cfg = next(iter(point.items()))
    faults.write_text(json.dumps({name: {**cfg, "marker": str(marker), "release": str(release)}}))
    proc = subprocess.Popen([VECTUNE, "reindex", str(sliced.spec_path), "--run-id", run_id, "--full", "--json",
                             *args], env=cli_env(VECTUNE_FAULTS=str(faults)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 400
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(proc.communicate()[1][-3000:])
        assert time.monotonic() < deadline, f"{run_id} never reached {name}"
        time.sleep(0.3)
    return proc, marker, release


# CI time (~25 s): the default tier has the shard check refusing a truncated segment
# (tests/unit/test_index_store.py) and a failed re-index leaving the alias (the full-disk drill below)
@pytest.mark.slow
@pytest.mark.ray
def test_a_truncated_segment_file_is_refused_by_verify_and_the_alias_stays(drilled, tmp_path):
    """Drill: a new version is built, then one of its segment files is truncated before
    verification loads it (the re-index is paused there): verification refuses it, the version
    is stamped failed, and the alias keeps serving v1."""
    from vectune.index.store import Target
    from vectune.index.engines import open_store

    proc, _, release = _paused(drilled, tmp_path, "v2", {"index.verify": {}})
    shard = Path(drilled.spec["index"]["qdrant"]["path"]) / "collections" / "slice__v2" / "shard"
    (page,) = shard.glob("segments/*/payload_storage/page_0.dat")
    os.truncate(page, 4096)  # the first page of the payloads is all that is left
    release.write_text("")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    error = json.loads(out)["error"]
    assert "slice__v2" in error and "Payload storage is corrupted" in error, error
    assert "The alias 'slice' still points at slice__v1" in error
    assert _live(drilled) == "slice__v1"
    store = open_store(Target(path=drilled.spec["index"]["qdrant"]["path"]))
    try:
        assert store.read_stamp("slice__v2")["state"] == "failed"
    finally:
        store.close()
    found = vectune("search", drilled.spec_path, drilled.queries[sorted(drilled.queries)[0]], "--json")
    assert found.returncode == 0 and json.loads(found.stdout)["collection"] == "slice__v1", found.stderr[-2000:]


@pytest.mark.ray
def test_a_full_disk_mid_reindex_is_a_clear_error_and_the_live_version_is_untouched(drilled, tmp_path, edge_disk):
    """Drill: the disk under the embedded store fills up while a new version is being loaded (the
    re-index is paused after 2 of its 10 upserts, a ballast file fills the tmpfs, the re-index goes
    on). Meanwhile a second writer is refused by the lease. The re-index fails with a clear error,
    the alias stays on v1 and v1's points are all there; once space is freed, the same command
    resumes and completes."""
    before = json.loads(vectune("collections", drilled.spec_path, "--json").stdout)
    proc, _, release = _paused(drilled, tmp_path, "v3", {"index.upsert": {"after": 2, "mode": "hang"}})
    second = vectune("rollback", drilled.spec_path, "--json", timeout=120)  # two writers: the lease refuses one
    assert second.returncode == 1 and json.loads(second.stdout)["kind"] == "LeaseHeld", second.stderr[-2000:]
    ballast = edge_disk / "ballast"
    free = os.statvfs(edge_disk).f_bavail * os.statvfs(edge_disk).f_frsize
    with open(ballast, "wb") as fh:  # leave 8 MiB: less than Edge needs to write safely
        fh.truncate(0)
        chunk = b"\0" * (1 << 20)
        for _ in range(free // (1 << 20) - 8):
            fh.write(chunk)
    release.write_text("")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]  # (Ray Data logs the failed write task's traceback on stderr)
    error = json.loads(out)["error"]
    assert "loading slice__v3 failed" in error and "not enough free space" in error, error
    assert _live(drilled) == "slice__v1"

    refused = vectune("search", drilled.spec_path, "aspirin", "--json")  # a reader on a full disk: refused, not killed
    assert refused.returncode == 1 and "not enough free space" in json.loads(refused.stdout)["error"]
    ballast.unlink()
    after = json.loads(vectune("collections", drilled.spec_path, "--json").stdout)
    v1 = {c["name"]: c for c in after["collections"]}["slice__v1"]
    assert after["live"] == "slice__v1" and v1["points"] == N_DRILL and v1["state"] == "ready"
    assert {c["name"]: c["points"] for c in before["collections"]}["slice__v1"] == N_DRILL
    resumed = vectune("reindex", drilled.spec_path, "--run-id", "v3", "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads(resumed.stdout)
    assert result["resumed"] is True and result["points"] == N_DRILL and result["previous"] == "slice__v1"
    assert _live(drilled) == "slice__v3"


def test_an_older_vectunes_store_is_refused_with_exit_2_and_left_alone(tiny_beir, tmp_path):
    """Drill: `index.qdrant.path` holds what an older vectune wrote (qdrant-client's local mode).
    Every command that opens the store exits 2 before anything starts, names the folder and the
    command that rebuilds it, and changes nothing in it."""
    from qdrant_client import QdrantClient, models

    old = tmp_path / "qdrant"
    client = QdrantClient(path=str(old))  # how an older vectune kept its embedded store
    client.create_collection("tiny__r1", vectors_config=models.VectorParams(size=384, distance=models.Distance.COSINE))
    client.update_collection_aliases(change_aliases_operations=[models.CreateAliasOperation(
        create_alias=models.CreateAlias(collection_name="tiny__r1", alias_name="tiny"))])
    client.close()
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in old.rglob("*")}
    spec = _spec(tiny_beir, tmp_path, index={"qdrant": {"path": str(old)}})
    out = vectune("reindex", spec, "--run-id", "new", "--json", timeout=300)  # a real process, as a user runs it
    commands = [("reindex", out.returncode, out.stdout, out.stderr)]
    from typer.testing import CliRunner

    from vectune.cli import app

    for command in (("collections", spec), ("search", spec, "aspirin"), ("rollback", spec)):  # the same code in-process
        result = CliRunner().invoke(app, [*map(str, command), "--json"])
        commands.append((command[0], result.exit_code, result.stdout, result.stderr))
    for command, code, stdout, stderr in commands:
        assert code == 2, (command, stderr[-2000:])
        error = json.loads(stdout)
        assert error["kind"] == "OldStoreError" and str(old) in error["error"], error
        assert f"vectune reindex {spec} --full --set index.qdrant.path={old}-edge" in error["error"]
        assert "Traceback" not in stderr
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in old.rglob("*")} == before
