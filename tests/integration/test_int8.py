"""`model.precision: int8`: the static int8 variant, built locally from a real model folder.

Real parts: the packaged all-MiniLM-L6-v2 (copied to a temporary folder, so the variant is
built beside it), torch's ONNX export, ONNX Runtime's optimizer, shape inference and static
quantizer, the packaged calibration texts, SciFact abstracts and queries. One build for the
module (~40-60 s on 2 cores). No Ray: the stage-level behaviour is in test_evaluate.py and
test_index_stage.py.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory):
    from vectune.embed import resolve_model

    path = tmp_path_factory.mktemp("int8") / "minilm"
    shutil.copytree(resolve_model("all-MiniLM-L6-v2"), path, ignore=shutil.ignore_patterns("onnx"))
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def empty_user_cache(tmp_path_factory):
    """A user cache of the module's own: the copy has the packaged model's fingerprint, so a
    variant of it in ~/.cache would be found instead of built."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        yield


@pytest.fixture(scope="module")
def built(model_copy):
    """The variant, built once for the module, and the fingerprint it was built for."""
    from vectune.embed import int8
    from vectune.embed.models import model_fingerprint

    before = model_fingerprint(model_copy)
    return int8.variant(model_copy, before), before


@pytest.fixture(scope="module")
def abstracts(scifact):
    docs = [json.loads(line) for line in list(scifact.corpus.values())[:48]]  # raw JSON lines
    return [(d.get("title", "") + " " + d["text"]).strip() for d in docs]


@pytest.fixture(scope="module")
def fp32_vectors(model_copy, abstracts):
    from vectune.embed.models import load_model

    return load_model(model_copy, max_seq_length=256).encode(abstracts, normalize_embeddings=True)


def test_the_variant_is_built_beside_the_model_once_measured_and_keeps_its_fingerprint(model_copy, built):
    from vectune.embed import int8
    from vectune.embed.models import model_fingerprint

    found, before = built
    assert found.built and found.folder.as_posix().endswith(f"minilm/onnx/int8-{int8.identity_key()}")
    meta = json.loads((found.folder / int8.META).read_text())
    assert meta["identity"] == int8.identity() and meta["tag"] == int8.tag() and meta["fingerprint"] == before
    # every MatMul with a weight quantized (6 layers x Q, K, V, output, up, down), each behind a smoothing Mul
    assert meta["fused"] is True and meta["quantized_matmuls"] == 36 and meta["float_matmuls"] == 0
    assert meta["smoothed_activations"] == 24  # Q, K and V share one input
    assert meta["calibration_texts"] == 96 and set(meta["step_seconds"]) == {"export", "fuse", "smooth",
                                                                             "calibrate_quantize"}
    # measured when built: vectors against fp32, and the packaged retrieval check
    assert meta["quality"]["texts"] == 48 and meta["quality"]["cosine_mean"] > 0.997
    (check,) = meta["checks"]
    assert check["ok"] and check["queries"] == 16 and check["documents"] == 32
    assert model_fingerprint(model_copy) == before  # derived files are not part of the model's identity
    assert not int8.variant(model_copy, before).built  # found, not rebuilt


def test_residual_inputs_stay_float_and_only_matmuls_read_quantized_activations(built):
    import onnx

    found, _ = built
    graph = onnx.load(str(found.graph), load_external_data=False)
    producer = {out: node for node in graph.graph.node for out in node.output}
    readers = {}
    for node in graph.graph.node:
        for name in node.input:
            dq = producer.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear" and producer.get(dq.input[0]) is not None:
                readers.setdefault(node.op_type, 0)
                readers[node.op_type] += 1
    # 24 quantized activations: per layer Q, K and V read one, the output, up and down projections one each
    assert readers == {"MatMul": 36}


def test_vectors_are_close_to_fp32(model_copy, built, abstracts, fp32_vectors):
    from vectune.embed import int8
    from vectune.embed.models import load_model

    model = load_model(model_copy, max_seq_length=256, precision="int8")
    vectors = model.encode(abstracts, normalize_embeddings=True)
    assert vectors.dtype == np.float32 and vectors.shape == fp32_vectors.shape
    cosine = (vectors * fp32_vectors).sum(axis=1)
    # measured on 64 SciFact abstracts (AVX-512 AMX): mean 0.9981, min 0.9969; recipe 3 (dynamic,
    # down-projections in fp32) 0.9989 / 0.9981
    assert cosine.mean() > 0.997 and cosine.min() > 0.99
    assert not np.allclose(vectors, fp32_vectors, atol=1e-4)  # it did run the int8 graph
    network = getattr(model[0], "model", None) or model[0].auto_model
    options = network.runner.session.get_session_options()
    if not int8.exact_u8s8():  # without VNNI: ONNX Runtime's exact U8U8 kernels (see the slow test below)
        assert options.get_session_config_entry(int8.X64_QUANT_PRECISION) == "1"


def test_a_vector_does_not_depend_on_its_batch(model_copy, built, abstracts, scifact):
    """Static ranges: a text alone, or batched (padded) with longer and shorter texts, in runs
    of any size, gives the same vector up to float rounding. Recipe 3 (dynamic ranges, per
    tensor) gave cosine ~0.993 between two batchings, so it ran every text alone."""
    from vectune.embed.models import load_model

    model = load_model(model_copy, max_seq_length=128, precision="int8")
    queries = [json.loads(line)["text"] for line in list(scifact.queries.values())[:8]]
    texts = [*abstracts[:8], *queries]
    alone = np.stack([model.encode([t], normalize_embeddings=True)[0] for t in texts])
    runner = (getattr(model[0], "model", None) or model[0].auto_model).runner
    for budget, batch in ((10**6, 64), (256, 64), (128, 4)):  # one padded call; runs; small batches
        runner.token_budget = budget
        batched = model.encode(texts, batch_size=batch, normalize_embeddings=True)
        np.testing.assert_allclose(batched, alone, atol=2e-5)
        assert float((batched * alone).sum(axis=1).min()) > 0.99999
    shuffled = model.encode(texts[::-1], batch_size=32, normalize_embeddings=True)[::-1]
    np.testing.assert_allclose(shuffled, alone, atol=2e-5)


def test_check_int8_scores_both_precisions_and_records_its_verdict(model_copy, built, scifact):
    from vectune.embed import int8
    from vectune.embed.int8_check import check_int8

    found, fingerprint = built
    qrels = dict(list(scifact.qrels["test"].items())[:8])
    docs = {d for rel in qrels.values() for d in rel}
    docs |= set(list(scifact.corpus)[:16])
    documents = {}
    for did in docs:
        row = json.loads(scifact.corpus[did])
        documents[did] = (row.get("title", "") + " " + row["text"]).strip()
    queries = {q: json.loads(scifact.queries[q])["text"] for q in qrels}
    verdict = check_int8(model_copy, queries, documents, qrels, tolerance=0.05, fingerprint=fingerprint,
                         max_seq_length=128, sample="SciFact test queries (8)")
    assert verdict.queries == 8 and verdict.documents == len(documents) and verdict.variant == int8.tag()
    assert 0.3 < verdict.ndcg_fp32 <= 1 and verdict.ok  # a loose tolerance: this is about the plumbing
    meta = json.loads((found.folder / int8.META).read_text())
    assert meta["checks"][-1]["sample"] == "SciFact test queries (8)" and meta["checks"][-1]["ok"] is True
    assert len(meta["checks"]) == 2  # the build's own check, then this one


def test_model_export_reports_a_variant_already_there(model_copy, built, capsys):
    from typer.testing import CliRunner

    from vectune.cli import app

    found, _ = built
    result = CliRunner().invoke(app, ["model", "export", model_copy, "--precision", "int8", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["path"] == str(found.graph) and out["built"] is False and out["quality"]["cosine_mean"] > 0.997


_EMULATED = """
import sys
import numpy as np
import onnxruntime as ort
import vectune.precision
from vectune.embed import int8

graph, tokens, out, cpuinfo = sys.argv[1:5]
ids = np.load(tokens)
if cpuinfo != "-":  # under qemu-user /proc/cpuinfo is the host's: say what CPUID says
    vectune.precision.CPUINFO = cpuinfo
exact = int8.Session(graph, threads=1).session  # the session vectune opens on this CPU
options = ort.SessionOptions()
options.intra_op_num_threads = 1
plain = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])  # the graph run as built
feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
np.save(out, np.stack([s.run(None, feed)[0] for s in (exact, plain)]))
"""


@pytest.mark.slow
def test_an_avx2_cpu_computes_the_vectors_of_a_vnni_one(built, abstracts, model_copy, tmp_path):
    """ONNX Runtime picks its int8 kernels from CPUID, which `qemu-x86_64 -cpu Haswell`
    emulates (AVX2, no VNNI). There the static graph run plainly saturates; run as vectune
    opens it, it gives this machine's (VNNI) output. Needs qemu-user (Debian: apt-get install
    qemu-user, 7.2 or later for AVX2), and a CPU with VNNI to compare with; ~2 minutes."""
    import os
    import subprocess
    import sys

    from vectune.precision import cpu_info

    qemu = shutil.which("qemu-x86_64")
    if qemu is None or not cpu_info().vnni:
        pytest.skip("needs qemu-x86_64 (qemu-user) and a CPU with VNNI")
    from transformers import AutoTokenizer

    found, _ = built
    ids = AutoTokenizer.from_pretrained(model_copy)(abstracts[0], truncation=True, max_length=16,
                                                   return_tensors="np")["input_ids"].astype(np.int64)
    np.save(tmp_path / "ids.npy", ids)
    (tmp_path / "run.py").write_text(_EMULATED)
    (tmp_path / "haswell").write_text("processor\t: 0\nmodel name\t: QEMU Haswell\nflags\t\t: sse2 avx avx2 fma\n")
    native, emulated = tmp_path / "native.npy", tmp_path / "emulated.npy"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(tmp_path / "run.py"), str(found.graph), str(tmp_path / "ids.npy")]
    subprocess.run([sys.executable, *args, str(native), "-"], check=True, env=env, timeout=300)
    subprocess.run([qemu, "-cpu", "Haswell-noTSX", sys.executable, *args, str(emulated), str(tmp_path / "haswell")],
                   check=True, env=env, timeout=900, stderr=subprocess.DEVNULL)  # QEMU warns of CPUID bits TCG lacks
    (exact_here, plain_here), (exact_avx2, plain_avx2) = np.load(native)[:, 0], np.load(emulated)[:, 0]

    def cosine(a, b):
        a, b = a.mean(axis=0), b.mean(axis=0)  # the mean pooling of all-MiniLM-L6-v2
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    np.testing.assert_array_equal(plain_here, exact_here)  # with VNNI the graph runs as built
    # measured on this text (recipe 4): exact 1.0 to the VNNI output; plain, saturated, 0.9941 to fp32
    # where the VNNI output is at 0.9983
    assert cosine(exact_avx2, exact_here) > 0.9999
    assert cosine(plain_avx2, exact_here) < 0.9995


def test_a_missing_runtime_names_the_extra(monkeypatch):
    import builtins

    from vectune.embed import int8
    from vectune.errors import ModelError

    real = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name.startswith("onnxruntime"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(ModelError, match=r"vectune\[int8\]"):
        int8.require_runtime()
