"""One writer per alias: two `vectune reindex` processes at once, one holds the lease and
the other exits within seconds naming it; the holder SIGKILLed, a new writer takes over once
its heartbeat is older than `index.lease_ttl`. Real processes, real Ray, the embedded Qdrant."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import yaml
from testdata import VECTUNE, cli_env

pytestmark = pytest.mark.ray




def test_a_second_writer_fails_fast_naming_the_holder_and_takes_over_after_expiry(make_slice, tmp_path, shm):
    sl = make_slice(tmp_path, n_docs=40, n_queries=5, seed=3,
                    spec={"model": {"max_seq_length": 48},
                          "index": {"batch_size": 4, "embed_batch_size": 10, "lease_ttl": 4,
                                    "qdrant": {"path": str(shm / "qdrant-lease")}}})
    mapping = yaml.safe_load(sl.spec_path.read_text())
    mapping["runtime"] = {"runs": str(tmp_path / "runs")}
    sl.spec_path.write_text(yaml.safe_dump(mapping))
    marker = shm / "holder-halfway"
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"index.upsert": {"after": 2, "mode": "hang", "marker": str(marker)}}))

    holder = subprocess.Popen([VECTUNE, "reindex", str(sl.spec_path), "--run-id", "holder"], start_new_session=True,
                              env=cli_env(VECTUNE_FAULTS=str(faults)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert holder.poll() is None, holder.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.5)
        start = time.monotonic()
        second = subprocess.run([VECTUNE, "reindex", str(sl.spec_path), "--run-id", "second", "--json"],
                                env=cli_env(), capture_output=True, text=True, timeout=120)
        took = time.monotonic() - start
        assert second.returncode == 1, second.stderr[-3000:]
        assert took < 30, f"the second writer took {took:.0f} s to give up"
        error = json.loads(second.stdout)
        assert error["kind"] == "LeaseHeld" and "run holder on" in error["error"] and "since" in error["error"]
        assert "--wait SECONDS" in error["error"]
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # a crashed holder: no release, the lease file stays
        holder.wait(timeout=60)
    lease = next((tmp_path / "runs" / "_leases").glob("*.json"))
    assert json.loads(lease.read_text())["run_id"] == "holder"

    # the killed holder's Ray workers let go of the embedded store as they die
    from qdrant_client import QdrantClient

    deadline = time.monotonic() + 90
    while True:
        try:
            QdrantClient(path=str(shm / "qdrant-lease")).close()
            break
        except RuntimeError:
            assert time.monotonic() < deadline, "the killed holder's workers never let go of the store"
            time.sleep(1)
    # the holder's process is gone from this host: the next writer need not wait for the expiry
    third = subprocess.run([VECTUNE, "reindex", str(sl.spec_path), "--run-id", "third", "--full", "--json"],
                           env=cli_env(), capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    said = " ".join(third.stderr.split())  # log lines wrap at the terminal's width
    assert "taking over the lease" in said and "its process is gone from this host" in said
    out = json.loads(third.stdout)
    assert out["lease"]["run_id"] == "third" and out["points"] == 40
    assert not lease.exists()  # released when the swap was done

    # a holder on another machine that stopped heartbeating (written by hand: there is no
    # second machine here) blocks until its lease expires (ttl 4 s), then is taken over
    lease.write_text(json.dumps({"run_id": "remote", "host": "another-machine", "pid": 1, "since": "earlier",
                                 "token": "t"}))
    refused = subprocess.run([VECTUNE, "rollback", str(sl.spec_path), "--json"], env=cli_env(),
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "run remote on another-machine" in json.loads(refused.stdout)["error"]
    start = time.monotonic()
    waited = subprocess.run([VECTUNE, "rollback", str(sl.spec_path), "--wait", "60", "--json"], env=cli_env(),
                            capture_output=True, text=True, timeout=120)
    assert "heartbeat stopped" in " ".join(waited.stderr.split()), waited.stderr[-2000:]
    assert time.monotonic() - start < 50
    assert not lease.exists()
