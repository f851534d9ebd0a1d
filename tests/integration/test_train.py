"""The train stage on real Ray Train (2 CPU workers), real mined triples, the real model.

Worker failures are real exceptions raised inside a training worker at a chosen step,
switched on through vectune's one fault registry (`vectune._faults`, `VECTUNE_FAULTS`):
the only way to lose a worker on cue on one machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vectune import _faults
from vectune.data import DomainData
from vectune.errors import GateFailed, StageError
from vectune.runs import Run

pytestmark = pytest.mark.ray

TRAIN = {"workers": 2, "cpus_per_worker": 0.8, "batch_size": 8, "checkpoint_every": 2, "epochs": 1,
         "negatives": 1, "max_failures": 0, "learning_rate": 5e-5}


def _mined(tmp_path_factory, make_slice, model: str | None):
    from vectune.mine import mine

    sl = make_slice(tmp_path_factory.mktemp("train"), n_docs=160, split=("train", "test"), n_queries=24,
                    spec={"model": {"max_seq_length": 48, **({"base": model} if model else {})},
                          "mine": {"num_negatives": 2, "range_min": 0, "range_max": 30}, "train": TRAIN})
    spec = sl.load()
    run = Run.create(spec, "mined")
    mine(spec, DomainData(spec), run)
    return sl, spec, run


@pytest.fixture(scope="module")
def mined(tmp_path_factory, make_slice, random_model, ray_local):
    """A slice with train and test queries, and a run whose mine stage finished, on a
    random-weight model: these tests are about checkpoints, resumes and lost workers, not
    about what the model learns (CI time)."""
    return _mined(tmp_path_factory, make_slice, random_model)


@pytest.fixture(scope="module")
def mined_minilm(tmp_path_factory, make_slice, ray_local):
    """The same with all-MiniLM-L6-v2: for a test about what training does to a real model."""
    return _mined(tmp_path_factory, make_slice, None)


def _fresh_run(spec, src: Run, run_id: str) -> Run:
    """A new run holding a copy of `src`'s mined triples (so each test trains from scratch)."""
    import shutil

    run = Run.create(spec, run_id)
    shutil.copytree(src.path("mine"), run.path("mine"))
    run.manifest["stages"]["mine"] = src.manifest["stages"]["mine"]
    run.save()
    return run


def _final_state(run: Run) -> dict:
    """The newest complete checkpoint's trainer state (a worker killed mid-save leaves a
    partial folder): its step, loss history and optimizer state."""
    ckpts = sorted(p for p in run.path("train", "ray").glob("checkpoint_*") if p.is_dir())
    for ckpt in reversed(ckpts):
        hf = ckpt / "checkpoint"
        try:
            state = json.loads((hf / "trainer_state.json").read_text())
            optimizer = torch.load(hf / "optimizer.pt", weights_only=False)
        except (RuntimeError, FileNotFoundError, json.JSONDecodeError):
            continue
        return {"step": state["global_step"], "history": [h for h in state["log_history"] if "loss" in h],
                "optimizer": optimizer}
    raise AssertionError("no complete checkpoint")


@pytest.fixture
def faults():
    """The fault registry, switched off again after the test."""
    yield _faults
    _faults.clear()


def _fail_at_step(faults, run: Run, step: int, mode: str = "raise") -> None:
    """Switch on the `train.step` fault: a worker dies once at `step` (the marker records it),
    by an exception (`raise`) or by SIGKILL of its process (`kill`)."""
    faults.switch(**{"train.step": {"at": step, "mode": mode, "marker": str(run.path("train", "injected-failure"))}})


def _adam_steps(state: dict) -> int:
    return int(next(iter(state["optimizer"]["state"].values()))["step"])


# CI time (29 s): two workers train in the default tier in test_lost_worker_resumes_within_the_run[kill],
# which checks the dimension, the card and the checkpointed Adam state of a two-worker run too
@pytest.mark.slow
def test_train_two_workers_keeps_dimension(mined, monkeypatch):
    import contextlib

    import ray
    from sentence_transformers import SentenceTransformer

    from vectune import progress
    from vectune.runs import base_model_path
    from vectune.train import stage, train

    # keep the stage's progress counter past the stage, to read what the workers ticked
    kept = []

    @contextlib.contextmanager
    def keep_counter(description, total, unit="docs"):
        kept.append(ray.remote(progress.Counter).options(num_cpus=0).remote())
        yield kept[-1]

    monkeypatch.setattr(stage, "track", keep_counter)
    _, spec, src = mined
    run = _fresh_run(spec, src, "plain")
    summary = train(spec, run, base_model_path(spec))
    assert summary["steps"] >= 2 and summary["dimension"] == 384
    done, info = ray.get(kept[0].read.remote())
    assert done == summary["steps"] and info["loss"] == summary["final_loss"]  # rank 0 ticked every step
    ray.kill(kept[0])
    model = SentenceTransformer(summary["model"])
    assert model.encode(["a claim"]).shape == (1, 384)
    card = json.loads((Path(summary["model"]) / "vectune_card.json").read_text())
    assert card["loss"]["type"] == "mnrl" and card["summary"]["steps"] == summary["steps"]
    state = _final_state(run)
    assert state["step"] == summary["steps"] == _adam_steps(state)


# CI time: the default tier resumes from a checkpoint in test_lost_worker_resumes_within_the_run[kill]
# (the same Adam-state and history assertions) and loads one in test_resume_never_unpickles...;
# a re-run after the driver died is drilled in test_driver_kill.py (slow too)
@pytest.mark.slow
def test_interrupted_training_resumes_from_checkpoint(mined, faults):
    """A run that dies at step 3 (checkpoint at 2) and is re-run continues at step 3 with the
    checkpoint's optimizer state: Adam's step counter ends at the total, not total - 2."""
    from vectune.runs import base_model_path
    from vectune.train import train

    _, spec, src = mined
    spec.train.epochs = 2  # one epoch of the slice is 3 steps: step 3 would be the last (and checkpointed)
    try:
        run = _fresh_run(spec, src, "interrupted")
        _fail_at_step(faults, run, 3)
        with pytest.raises(StageError, match="injected worker failure"):
            train(spec, run, base_model_path(spec))
        assert _final_state(run)["step"] == 2
        faults.clear()
        summary = train(spec, Run.open(spec, run.id), base_model_path(spec))
    finally:
        spec.train.epochs = 1
    assert summary["steps"] > 3
    state = _final_state(run)
    assert state["step"] == summary["steps"]
    assert _adam_steps(state) == summary["steps"]  # optimizer state came from the checkpoint
    assert [h["step"] for h in state["history"]] == list(range(1, summary["steps"] + 1))


# the `raise` variant is in the slow tier (CI stays under 20 minutes); `kill` is the real loss
@pytest.mark.parametrize("mode", [pytest.param("raise", marks=pytest.mark.slow), "kill"])
def test_lost_worker_resumes_within_the_run(mined, faults, mode):
    """With max_failures: 1, Ray Train restarts the workers from the last checkpoint, for an
    exception in a worker and for a worker process SIGKILLed mid-epoch (drill a): the steps
    up to that checkpoint are not run again, only those after it. (The worker dies at step 5,
    two checkpoints after the first: a checkpoint the controller has not yet registered when
    the worker dies is lost, as it should be, and the random-weight model's steps take
    milliseconds.)"""
    from vectune.runs import base_model_path
    from vectune.train import train

    _, spec, src = mined
    spec.train.max_failures = 1
    spec.train.epochs = 3  # 9 steps: the kill at step 5 lands mid-run, after the checkpoints at 2 and 4
    try:
        run = _fresh_run(spec, src, f"lost-worker-{mode}")
        _fail_at_step(faults, run, 5, mode)
        summary = train(spec, run, base_model_path(spec))
    finally:
        spec.train.max_failures = 0
        spec.train.epochs = 1
    assert run.path("train", "injected-failure").read_text() == "5"
    assert spec.train.workers == 2 and summary["dimension"] == 384
    card = json.loads((Path(summary["model"]) / "vectune_card.json").read_text())
    assert card["loss"]["type"] == "mnrl" and card["summary"]["steps"] == summary["steps"]
    state = _final_state(run)
    assert state["step"] == summary["steps"] == _adam_steps(state) > 5
    # the log history the run resumed with: every step once, none before the checkpoint twice
    assert [h["step"] for h in state["history"]] == list(range(1, summary["steps"] + 1))
    # resumed, not restarted: the steps up to a checkpoint (2 or 4) were logged before the
    # worker died (the marker's time) and kept from it; the steps after it were run (again) after
    died = run.path("train", "injected-failure").stat().st_mtime
    logged = {h["step"]: h["time"] for h in map(json.loads, run.path("train", "loss.jsonl").read_text().splitlines())}
    kept = max((s for s in logged if logged[s] < died), default=0)
    assert kept in (2, 4), (died, logged)
    assert all(logged[s] < died for s in logged if s <= kept) and all(logged[s] > died for s in logged if s > kept)


# CI time (~40 s: two Ray Train runs): the default tier refuses the tampered checkpoint through the
# workers' own trainer in-process (tests/unit/test_train_resume.py); this is the whole path
@pytest.mark.slow
def test_resume_never_unpickles_code_from_the_runs_storage(mined, faults, tmp_path):
    """Checkpoint state is loaded with torch.load(weights_only=True): a checkpoint file in a
    shared runs volume that holds a pickled callable is refused, never run (defect 10)."""
    import pickle

    from vectune.runs import base_model_path
    from vectune.train import train

    _, spec, src = mined
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    run = _fresh_run(spec, src, "tampered")
    _fail_at_step(faults, run, 3)
    spec.train.epochs = 2
    try:
        with pytest.raises(StageError, match="injected worker failure"):
            train(spec, run, base_model_path(spec))
        faults.clear()
        tampered = list(run.path("train", "ray").glob("checkpoint_*/checkpoint/rng_state*.pth"))
        assert tampered
        for path in tampered:
            path.write_bytes(pickle.dumps(Payload()))
        with pytest.raises(StageError, match="(?i)weights_only|unpickl"):
            train(spec, Run.open(spec, run.id), base_model_path(spec))
    finally:
        spec.train.epochs = 1
    assert not marker.exists()


@pytest.mark.slow  # CI time: the default tier's gate test is test_run.py's (a refused run, exit 3)
def test_gate_blocks_a_worse_model(mined_minilm):
    """An absurd learning rate wrecks the model; `vectune run` stops at the gate with exit
    code 3, records the refusal, and never creates a collection."""
    from typer.testing import CliRunner

    from vectune.cli import app

    sl, spec, src = mined_minilm
    import yaml

    mapping = dict(sl.spec)
    mapping["train"] = {**TRAIN, "learning_rate": 0.05, "warmup_ratio": 0.0}
    bad = sl.root / "bad.yaml"
    bad.write_text(yaml.safe_dump(mapping))
    result = CliRunner().invoke(app, ["run", str(bad), "--run-id", "absurd"])
    assert result.exit_code == 3, result.output
    assert "gate failed" in result.output
    from vectune.spec import load_spec

    run = Run.open(load_spec(bad), "absurd")
    assert run.manifest["gate"]["passed"] is False
    assert run.manifest["gate"]["tuned"] < run.manifest["gate"]["base"]
    assert "reindex" not in run.manifest["stages"] and "collection" not in run.manifest
    # the report of this real run (mine, Ray Train, evaluate, gate) shows its own figures
    import json

    page = (run.dir / "report.html").read_text(encoding="utf-8")
    metrics = json.loads((run.dir / "metrics.json").read_text())
    for role in ("base", "tuned"):
        assert f"{metrics[role]['test']['metrics']['ndcg@10']:.4f}" in page
    assert "refused" in page.lower() or "failed" in page.lower()
    assert page.count("data:image/png;base64,") >= 3 and "http://" not in page and "https://" not in page
    metrics = run.read_json("metrics.json")
    assert set(metrics) == {"base", "tuned", "bm25"}  # BM25 is scored beside the models, never gated on
