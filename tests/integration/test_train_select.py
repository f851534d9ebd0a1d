"""Training chosen on validation: several learning rates, each scored at its checkpoints on
held-out training queries ranking the corpus; a setting behind an earlier one is cut; a
model that does not beat the starting one there is never kept, and `run` stops (exit 3).

A learning rate of 0.5 wrecks a MiniLM in one step (every Adam update moves each weight by
~0.5): it stands in for a setting that forgets the domain faster than it learns it. A learning
rate of 1e-12 changes no weight: it stands in for a setting that never gets past the start.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vectune.data import DomainData
from vectune.runs import Run

pytestmark = pytest.mark.ray

TRAIN = {"workers": 1, "cpus_per_worker": 1, "batch_size": 8, "max_steps": 4, "epochs": 3, "checkpoint_every": 2,
         "negatives": 1, "max_failures": 0, "learning_rate": 3e-5, "validation_queries": 8,
         "validation_docs": 100, "interpolation": [0.0, 0.5, 1.0]}


@pytest.fixture(scope="module")
def mined(tmp_path_factory, make_slice, ray_local):
    from vectune.mine import mine

    sl = make_slice(tmp_path_factory.mktemp("select"), n_docs=160, split=("train", "test"), n_queries=40,
                    spec={"model": {"max_seq_length": 48}, "mine": {"num_negatives": 1, "range_max": 20},
                          "train": TRAIN, "evaluate": {"overlap": "allow"}})
    spec = sl.load()
    run = Run.create(spec, "mined")
    mine(spec, DomainData(spec), run)
    return sl, spec, run


def _copy(spec, src: Run, run_id: str) -> Run:
    import shutil

    run = Run.create(spec, run_id)
    shutil.copytree(src.path("mine"), run.path("mine"))
    run.manifest["stages"]["mine"] = src.manifest["stages"]["mine"]
    run.save()
    return run


def test_a_setting_behind_an_earlier_one_is_cut_and_a_model_that_does_not_beat_the_start_stops_the_run(mined):
    """Two learning rates through `vectune run`: 1e-12 moves no float32 weight (each Adam step
    moves a weight by about the learning rate, far below a weight's precision), so its checkpoints
    score exactly what the starting model scores and never beat it; 0.5 wrecks the model and is
    cut at its first checkpoint, behind the first rate there. Nothing beats the starting model:
    it is what the run keeps, and the run stops before the gate (exit 3). One run for both
    behaviours (each Ray Train run costs ~15 s of start-up here)."""
    from sentence_transformers import SentenceTransformer

    from vectune import pipeline
    from vectune.errors import GateFailed
    from vectune.runs import base_model_path

    _, spec, src = mined
    spec = spec.derived(train=spec.train.model_copy(update={"learning_rate": 1e-12, "learning_rates": [0.5]}))
    _copy(spec, src, "two-rates")  # the mine stage, finished with the same inputs: `run` skips it
    with pytest.raises(GateFailed, match="beat the starting model") as caught:
        pipeline.run(spec, run_id="two-rates")
    assert caught.value.exit_code == 3
    run = Run.open(spec, "two-rates")
    saved = json.loads(run.path("train", "settings.json").read_text())
    rates = [s["learning_rate"] for s in saved["settings"]]
    assert rates == [1e-12, 0.5]
    first, wrecked = saved["settings"]
    assert [c["step"] for c in first["curve"]] == [2, 4] and first["steps_run"] == 4
    base = saved["base"]["ndcg@10"]
    assert all(c["ndcg@10"] == base for c in first["curve"])  # the starting model, step after step
    # the wrecked rate scores far below the first at step 2 and stops there
    assert wrecked["curve"][0]["step"] == 2 and wrecked["curve"][0]["ndcg@10"] < first["curve"][0]["ndcg@10"]
    assert wrecked["steps_run"] == 2 and "behind" in wrecked["stopped"]
    assert saved["chosen"]["beats_base"] is False
    summary = run.stage_info("train")["outputs"]
    assert summary["learning_rate"] == 1e-12
    # the starting model was scored on the same queries before step 1; they rank 100 of the
    # 160 documents (validation_docs): a sample of the corpus holding every labelled one of theirs
    assert set(saved["base"]) >= {"ndcg@10", "recall@100"}
    v = summary["validation"]
    assert v["queries"] == 8 and v["docs"] == 100 and v["sampled"] and v["corpus"] == 160
    assert v["base"] == saved["base"] and v["beats_base"] is False and v["kept"]["ndcg@10"] <= base
    # what trained, reported
    trained = summary["trained"]
    assert trained["rows"] == summary["rows"] and trained["queries"] <= 40 - 8
    assert sum(int(k) * n for k, n in trained["positives_per_query"]["distribution"].items()) == trained["rows"]
    # the kept model is the starting one, weight for weight
    text = ["Vitamin D deficiency is associated with multiple sclerosis."]
    kept = SentenceTransformer(str(run.path("model"))).encode(text)
    start = SentenceTransformer(base_model_path(spec)).encode(text)
    assert np.allclose(kept, start, atol=1e-6)
    # stopped before the gate: nothing evaluated, nothing indexed, the refusal on record
    assert run.manifest["gate"]["passed"] is False and run.manifest["gate"]["stage"] == "train"
    assert "evaluate:tuned:test" not in run.manifest.get("stages", {})
    assert "reindex" not in run.manifest.get("stages", {})
