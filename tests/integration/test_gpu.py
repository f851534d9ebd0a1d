"""GPU paths: fp16 encoding, encoder actors on fractional GPUs in every stage that encodes, and
training on a GPU worker. Marked `gpu`: collected everywhere, run only where CUDA is
available (tests/conftest.py skips them otherwise). Real parts: the packaged model, a local
Ray that sees the GPU, the embedded Qdrant engine, a SciFact slice.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

pytestmark = [pytest.mark.gpu, pytest.mark.ray]


def _abstracts(scifact, n: int) -> list[str]:
    docs = [json.loads(line) for line in list(scifact.corpus.values())[:n]]
    return [(d.get("title", "") + " " + d["text"]).strip() for d in docs]


def test_fp16_vectors_on_cuda_match_fp32(scifact):
    """model.precision fp16 on a GPU: half weights, vectors within cosine 0.999 of fp32."""
    import dataclasses

    from vectune.embed import Encoder, EncoderConfig, model_fingerprint, resolve_model

    path = resolve_model("all-MiniLM-L6-v2")
    config = EncoderConfig(model_path=path, fingerprint=model_fingerprint(path), max_seq_length=256)
    texts = _abstracts(scifact, 256)
    fp32 = Encoder(dataclasses.replace(config, device="cuda")).encode(texts)
    half = Encoder(dataclasses.replace(config, device="cuda", precision="fp16"))
    fp16 = half.encode(texts)
    assert str(half.model.device).startswith("cuda")
    assert next(half.model.parameters()).dtype.itemsize == 2  # the weights are half
    assert fp16.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fp16, axis=1), 1.0, atol=1e-5)
    assert float((fp16 * fp32).sum(axis=1).min()) > 0.999


def test_a_whole_run_on_gpus(make_slice, tmp_path, ray_local):
    """`vectune run` with every encoding stage on half a GPU per actor in fp16, and training on a
    GPU worker: the loop completes, the collection is stamped fp16, and the evaluate stage's
    tuned figures are fp16's."""
    import ray

    from vectune.cli import app
    from vectune.index import collections as cols
    from vectune.index import connect
    from vectune.runs import Run
    from vectune.spec import load_spec

    assert ray.cluster_resources().get("GPU", 0) >= 1, "the local Ray does not see the GPU"
    sl = make_slice(tmp_path, n_docs=200, split="test", n_queries=40, seed=5,
                    spec={"model": {"max_seq_length": 64, "precision": "fp16"},
                          "mine": {"num_negatives": 1, "range_max": 20, "num_gpus": 0.5},
                          "train": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 1, "batch_size": 16,
                                    "epochs": 2, "negatives": 1, "learning_rate": 1e-4, "precision": "bf16",
                                    "validation_queries": 0, "max_failures": 0},
                          "evaluate": {"overlap": "allow", "num_gpus": 0.5,
                                       "gate": {"metric": "ndcg@10", "min_gain": 0.0, "max_p_value": 1.0,
                                                "no_regress": []}},
                          "index": {"num_gpus": 0.5, "concurrency": 1}})
    mapping = yaml.safe_load(sl.spec_path.read_text())
    shutil.copy(sl.qrels_path("test"), sl.root / "qrels" / "train.tsv")
    mapping["data"]["train"] = {"path": "qrels/train.tsv"}
    sl.spec_path.write_text(yaml.safe_dump(mapping))

    result = CliRunner().invoke(app, ["run", str(sl.spec_path), "--run-id", "gpu", "--json"])
    assert result.exit_code in (0, 3), result.output
    spec = load_spec(sl.spec_path)
    manifest = Run.open(spec, "gpu").manifest
    for stage in ("mine", "train", "evaluate:base:test", "evaluate:tuned:test", "gate"):
        assert manifest["stages"][stage]["status"] == "done", stage
    if result.exit_code == 0:
        client = connect(spec)
        try:
            assert cols.read_stamp(client, manifest["collection"]["name"])["precision"] == "fp16"
        finally:
            client.close()
