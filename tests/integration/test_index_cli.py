"""`vectune reindex / search / collections / rollback` as a user runs them: real
processes, one killed mid-load while it holds the alias's lease, a server that refuses
connections, a key that must never show."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from testdata import other_model

N_DOCS = 100  # CI time: the killed re-index hangs after 4 batches of 16, well inside it
KEY = "sk-vectune-SECRET-7f3a9c51d2"
KEY_ENV = "VECTUNE_TEST_QDRANT_KEY"
VECTUNE = str(Path(sys.executable).with_name("vectune"))


def _hang_after(path: Path, batches: int, marker: Path) -> Path:
    """A fault file for a child process: the re-index hangs after `batches` upserts."""
    path.write_text(json.dumps({"index.upsert": {"after": batches, "mode": "hang", "marker": str(marker)}}))
    return path


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VECTUNE_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def vectune(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([VECTUNE, *map(str, args)], capture_output=True, text=True, env=env or _env(),
                          timeout=timeout)


@pytest.fixture(scope="module")
def sliced(make_slice, shm):
    return make_slice(shm / "slice", n_docs=N_DOCS, n_queries=30, seed=1, spec={
        "model": {"max_seq_length": 64},
        "index": {"batch_size": 16, "embed_batch_size": 50, "keep": 2, "verify_sample": 8, "lease_ttl": 4,
                  "qdrant": {"path": str(shm / "qdrant")}}})


def _open(sliced):
    """The embedded store, each of its shards opened once the process that held it is gone (Edge's
    lock on a shard frees on exit)."""
    from vectune.errors import IndexingError
    from vectune.index import connect

    deadline = time.monotonic() + 90
    while True:
        store = connect(sliced.load())
        try:
            for name in store.collections():
                store.count(name)
            return store
        except IndexingError:
            store.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@contextlib.contextmanager
def hung_after_upserts(sliced, shm, run_id: str, batches: int, *args: str):
    """Start `vectune reindex [args]` for `run_id` and wait until it hangs after `batches`
    upsert requests (still holding the alias's lease, its heartbeat running); on leaving,
    SIGKILL it: the driver, its Ray and the engine's owner, mid-write, with no release."""
    marker = shm / f"halfway-{run_id}"
    log_path = shm / f"killed-{run_id}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([VECTUNE, "reindex", str(sliced.spec_path), "--run-id", run_id, *args], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=_env(VECTUNE_FAULTS=str(_hang_after(shm / "faults.json", batches, marker))))
        try:
            deadline = time.monotonic() + 400
            while not marker.exists():
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, f"the re-index never reached upsert request {batches}"
                time.sleep(0.5)
            yield proc
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)


def kill_after_upserts(sliced, shm, run_id: str, batches: int, *args: str) -> None:
    """`vectune reindex [args]` for `run_id`, SIGKILLed once it has sent `batches` upsert requests."""
    with hung_after_upserts(sliced, shm, run_id, batches, *args):
        pass


def _collections(sliced) -> dict:
    out = vectune("collections", sliced.spec_path, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def built(sliced):
    """k1 live, built by `vectune reindex` in its own process."""
    out = vectune("reindex", sliced.spec_path, "--run-id", "k1", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


# CI time (~45 s): the default tier has a failed re-index resumed to the exact count with the alias
# left (test_reliability.py's full-disk drill) and writers SIGKILLed mid-swap (test_reliability.py)
@pytest.mark.slow
@pytest.mark.ray
def test_killed_reindex_reruns_to_exact_count_and_alias_never_moved_early(sliced, built, shm):
    """A full build SIGKILLed mid-load, its lease held: meanwhile a second writer exits 1
    within seconds naming the holder (one writer per alias); the killed holder leaves its
    lease behind, and the re-run takes it over at once (its process is gone from this host),
    resumes the same collection to exactly the corpus and only then moves the alias. A holder
    on another machine that stopped heartbeating blocks a rollback until its lease expires."""
    from vectune.index import collections as cols

    assert built["points"] == N_DOCS and built["name"] == "slice__k1"
    with hung_after_upserts(sliced, shm, "k2", 4, "--full"):  # a new collection, not a sync of k1
        start = time.monotonic()
        second = vectune("reindex", sliced.spec_path, "--run-id", "second", "--json", timeout=120)
        took = time.monotonic() - start
    assert second.returncode == 1, second.stderr[-3000:]
    assert took < 30, f"the second writer took {took:.0f} s to give up"
    error = json.loads(second.stdout)
    assert error["kind"] == "LeaseHeld" and "run k2 on" in error["error"] and "since" in error["error"]
    assert "--wait SECONDS" in error["error"]
    lease = next((sliced.root / "runs" / "_leases").glob("*.json"))
    assert json.loads(lease.read_text())["run_id"] == "k2"  # a crashed holder: no release, the file stays

    client = _open(sliced)  # the killed holder's Ray workers let go of the embedded store as they die
    try:
        assert cols.live_collection(client, "slice") == "slice__k1"
        assert cols.read_stamp(client, "slice__k2")["state"] == "building"
        assert 0 < client.count("slice__k2") < N_DOCS
    finally:
        client.close()

    rerun = vectune("reindex", sliced.spec_path, "--run-id", "k2", "--json")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    said = " ".join(rerun.stderr.split())  # log lines wrap at the terminal's width
    assert "taking over the lease" in said and "its process is gone from this host" in said
    result = json.loads(rerun.stdout)
    assert result["mode"] == "full" and result["reason"] == "resuming the full build of slice__k2"
    assert result["resumed"] is True and result["points"] == N_DOCS and result["previous"] == "slice__k1"
    assert result["lease"]["run_id"] == "k2" and not lease.exists()  # released when the swap was done
    client = _open(sliced)
    try:
        assert cols.live_collection(client, "slice") == "slice__k2"
        doc_ids = [r.payload["doc_id"] for page in client.scroll("slice__k2", ["doc_id"]) for r in page]
        assert len(doc_ids) == N_DOCS and set(doc_ids) == set(sliced.doc_ids)  # exactly the corpus, once each
    finally:
        client.close()

    # a holder on another machine that stopped heartbeating (written by hand: there is no
    # second machine here) blocks until its lease expires (ttl 4 s), then is taken over
    lease.write_text(json.dumps({"run_id": "remote", "host": "another-machine", "pid": 1, "since": "earlier",
                                 "token": "t"}))
    refused = vectune("rollback", sliced.spec_path, "--json", timeout=120)
    assert refused.returncode == 1 and "run remote on another-machine" in json.loads(refused.stdout)["error"]
    start = time.monotonic()
    back = vectune("rollback", sliced.spec_path, "--wait", "60", "--json", timeout=120)
    assert back.returncode == 0, back.stderr[-2000:]
    assert "heartbeat stopped" in " ".join(back.stderr.split()), back.stderr[-2000:]
    assert time.monotonic() - start < 50 and not lease.exists()
    assert json.loads(back.stdout)["live"] == "slice__k1"
    listed = _collections(sliced)
    assert listed["live"] == "slice__k1"
    assert {c["name"]: c["state"] for c in listed["collections"]} == {"slice__k2": "rolled_back",
                                                                      "slice__k1": "ready"}
    table = vectune("collections", sliced.spec_path, env=_env(COLUMNS="200"))
    assert table.returncode == 0 and "slice__k1" in table.stdout and "rolled_back" in table.stdout


@pytest.mark.ray
def test_search_uses_the_stamped_model_and_refuses_another(sliced, built, shm):
    from typer.testing import CliRunner

    from vectune.cli import app

    def cli(*args):  # in-process: the same command code, without a new interpreter per call
        return CliRunner().invoke(app, [str(a) for a in args])

    qid = sorted(sliced.qrels["test"])[0]
    relevant = set(sliced.qrels["test"][qid])
    out = cli("search", sliced.spec_path, sliced.queries[qid], "-k", 10, "--json")
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert relevant & {h["doc_id"] for h in result["hits"]}
    assert result["model"]["fingerprint"] == result["model"]["stamped"]

    table = cli("search", sliced.spec_path, sliced.queries[qid], "-k", 3)
    assert table.exit_code == 0 and "doc id" in table.stdout

    other = other_model(shm)
    refused = cli("search", sliced.spec_path, "anything", "--model", other)
    assert refused.exit_code == 2
    assert "is not the model that built the live collection" in refused.stderr
    assert refused.exception is None or isinstance(refused.exception, SystemExit)  # no traceback
    forced = cli("search", sliced.spec_path, sliced.queries[qid], "--model", other, "--force", "--json")
    assert forced.exit_code == 0 and json.loads(forced.stdout)["model"]["forced"] is True


def test_refused_server_retries_fails_cleanly_and_never_shows_the_key(sliced, shm):
    mapping = yaml.safe_load(sliced.spec_path.read_text())
    mapping["index"]["qdrant"] = {"url": "http://127.0.0.1:1", "api_key_env": KEY_ENV, "retries": 2, "timeout": 2}
    mapping["runtime"]["runs"] = str(shm / "server-runs")
    spec = sliced.root / "spec-server.yaml"
    spec.write_text(yaml.safe_dump(mapping))
    env = _env(**{KEY_ENV: KEY})

    start = time.monotonic()
    out = vectune("reindex", spec, "--run-id", "s1", "-v", env=env)
    assert time.monotonic() - start < 60
    assert out.returncode == 1
    assert "cannot reach Qdrant at http://127.0.0.1:1 after 3 attempt(s)" in out.stderr
    assert out.stderr.count("unreachable") == 2  # two retries, logged, then the error
    assert "Traceback" not in out.stderr
    seen = out.stdout + out.stderr
    for command in (("search", spec, "query"), ("collections", spec), ("rollback", spec)):
        other = vectune(*command, "-v", env=env)
        assert other.returncode == 1 and "cannot reach Qdrant" in other.stderr
        seen += other.stdout + other.stderr
    assert KEY not in seen
    files = [p for p in (shm / "server-runs").rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in files)
    for path in files:
        assert KEY not in path.read_text(errors="replace"), path
    manifest = json.loads((shm / "server-runs" / "slice" / "s1" / "manifest.json").read_text())
    assert manifest["stages"]["reindex"]["status"] == "failed"
    assert manifest["collection"]["state"] == "failed"
