"""Drill (d): the driver of `vectune run` is SIGKILLed (with its whole process group: the
local Ray it started dies with it, as on a lost machine) once during training and once
during the re-index. Re-running the same run id resumes each stage: training from its last
checkpoint, the re-index into the same collection; the alias is never on an unverified
collection. Minutes long: `slow` (run with --run-slow; figures in the README)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from testdata import VECTUNE, cli_env

pytestmark = [pytest.mark.ray, pytest.mark.slow]




@pytest.fixture
def spec_path(tmp_path, make_slice, shm):
    sl = make_slice(tmp_path, n_docs=120, split="test", n_queries=40, seed=11,
                    spec={"model": {"max_seq_length": 48},
                          "mine": {"num_negatives": 1, "range_max": 20},
                          "train": {"workers": 1, "cpus_per_worker": 1.5, "batch_size": 8, "epochs": 4,
                                    "negatives": 1, "learning_rate": 1e-4, "max_failures": 0,
                                    "validation_queries": 0, "checkpoint_every": 2},
                          # `exact`: the collection is loaded in the re-index stage, where this drill kills
                          # (with `index`, the gate's candidate build does that load in the evaluate stage)
                          "evaluate": {"overlap": "allow", "through": "exact",
                                       "gate": {"metric": "ndcg@10", "min_gain": 0.0, "max_p_value": 1.0, "no_regress": []}}})
    mapping = yaml.safe_load(sl.spec_path.read_text())
    shutil.copy(sl.qrels_path("test"), sl.root / "qrels" / "train.tsv")
    mapping["data"]["train"] = {"path": "qrels/train.tsv"}
    mapping["index"] = {"collection": "slice", "alias": "slice", "keep": 2, "batch_size": 8, "embed_batch_size": 20,
                        "qdrant": {"path": str(shm / "qdrant-kill")}}
    mapping["runtime"] = {"runs": str(tmp_path / "runs")}
    sl.spec_path.write_text(yaml.safe_dump(mapping))
    return sl.spec_path


def _manifest(runs: Path) -> dict:
    path = runs / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _start(spec_path: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([VECTUNE, "run", str(spec_path), "--run-id", "drill"], env=cli_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _kill_when(proc: subprocess.Popen, ready, what: str, limit: float = 600) -> None:
    deadline = time.monotonic() + limit
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()[1].decode()[-3000:]}"
        assert time.monotonic() < deadline, f"never reached {what}"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _alias(store: Path):
    """(the alias's collection, every version) of the embedded store: records only, so no shard
    a killed process may still hold is opened."""
    from vectune.index.store import Target
    from vectune.index.engines import open_store

    opened = open_store(Target(path=str(store)))
    try:
        return opened.alias("slice"), set(opened.collections())
    finally:
        opened.close()


def test_killed_driver_resumes_training_and_reindex_under_the_same_run_id(spec_path, tmp_path, shm):
    runs = tmp_path / "runs" / "slice" / "drill"

    def checkpointed() -> bool:
        return _manifest(runs).get("stages", {}).get("train", {}).get("status") == "running" and \
            any(runs.glob("train/ray/checkpoint_*/checkpoint/trainer_state.json"))

    first = _start(spec_path)
    _kill_when(first, checkpointed, "a training checkpoint")
    killed_at = max(json.loads(p.read_text())["global_step"]
                    for p in runs.glob("train/ray/checkpoint_*/checkpoint/trainer_state.json"))
    assert _manifest(runs)["stages"]["train"]["status"] == "running"  # died without a word

    marker = shm / "reindex-halfway"
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"index.upsert": {"after": 4, "mode": "hang", "marker": str(marker)}}))
    second_started = time.time()
    second = _start(spec_path, VECTUNE_FAULTS=str(faults))
    _kill_when(second, marker.exists, "the middle of the re-index")
    manifest = _manifest(runs)
    assert manifest["stages"]["train"]["status"] == "done" and manifest["stages"]["reindex"]["status"] == "running"
    history = [json.loads(line) for line in (runs / "train" / "loss.jsonl").read_text().splitlines()]
    steps = [h["step"] for h in history]
    assert steps == list(range(1, len(steps) + 1))
    # resumed from a checkpoint of the first driver: the steps up to it were logged by the first
    # driver and not run again by the second; the steps after it were. It is the last one seen
    # at the kill, or one the first driver was already writing then (checkpoints every 2 steps)
    resumed_from = min(h["step"] for h in history if h["time"] > second_started) - 1
    assert resumed_from >= killed_at and resumed_from % 2 == 0, (killed_at, resumed_from, history)
    assert all(h["time"] < second_started for h in history if h["step"] <= resumed_from), (resumed_from, history)
    assert all(h["time"] > second_started for h in history if h["step"] > resumed_from), (resumed_from, history)
    live, names = _alias(shm / "qdrant-kill")
    assert live is None  # never promoted mid-way (the first build is the alias's first)
    building = manifest["collection"]["name"]
    assert building in names

    third = subprocess.run([VECTUNE, "run", str(spec_path), "--run-id", "drill", "--json"], env=cli_env(),
                           capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stderr[-3000:]
    manifest = _manifest(runs)
    assert manifest["stages"]["reindex"]["status"] == "done"
    assert manifest["collection"]["name"] == building and manifest["collection"]["points"] == 120
    live, names = _alias(shm / "qdrant-kill")
    assert live == building

