"""A resumed training loads its checkpoint's state without ever unpickling code (defect 10).

The trainer here is the one every Ray Train worker builds (`vectune.train.loop.build_trainer`),
run in this process without Ray: a worker resumes by copying the Ray checkpoint's folder and
calling `trainer.train(resume_from_checkpoint=...)` on it, and that call is what loads the
files a shared runs volume could hold tampered. The same drill through Ray Train and the
runs folder is `tests/integration/test_train.py::test_resume_never_unpickles_code_from_the_runs_storage`
(slow tier: two Ray Train runs).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

ROWS = [{"query": f"query {q}", "positive": f"doc {q}", "negatives": [f"other {q}"], "group": 1} for q in range(16)]


def _trainer(model: str, work: Path):
    import pyarrow as pa
    import torch
    from ray.train.huggingface.transformers import RayTrainReportCallback

    from vectune.spec.train import MNRLoss
    from vectune.train.loop import LoopConfig, build_trainer, datasets_from_table

    config = LoopConfig(model_path=model, base_model_path=model, loss=MNRLoss(), groups=(1,), micro_batch=4,
                        accumulation=1, total_steps=4, warmup_steps=0, checkpoint_every=2, learning_rate=1e-5,
                        weight_decay=0.0, precision="fp32", max_seq_length=16, seed=3, threads=1)
    trainer = build_trainer(config, datasets_from_table(pa.Table.from_pylist(ROWS), (1,)), rank=0, world=1,
                            device=torch.device("cpu"), work=str(work))
    trainer.remove_callback(RayTrainReportCallback)  # no Ray Train session to report to here
    return trainer


def test_a_checkpoint_holding_a_pickled_callable_is_refused_never_run(random_model, tmp_path):
    first = _trainer(random_model, tmp_path / "first")
    first.args.max_steps = 2  # one checkpoint, at step 2
    first.train()
    (checkpoint,) = (tmp_path / "first").glob("checkpoint-*")
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    tampered = list(checkpoint.glob("rng_state*.pth"))
    assert tampered, sorted(p.name for p in checkpoint.iterdir())
    for path in tampered:
        path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(pickle.UnpicklingError, match="(?i)weights.only"):
        _trainer(random_model, tmp_path / "second").train(resume_from_checkpoint=str(checkpoint))
    assert not marker.exists()
