"""The int8 variant's identity, where it lives, how a batch is run, and the fallback verdict.

No variant is built here (the build is stubbed where a folder must hold one): the real build,
its vectors and their batch independence are in tests/integration/test_int8.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vectune.embed import int8


# -- batching ---------------------------------------------------------------------------------
@pytest.mark.parametrize("lengths, budget", [
    ([5, 9, 9, 3, 250, 12, 1, 64, 64, 64], 128), ([300, 2, 2], 256), ([30] * 100, 512), ([7], 4), ([], 512)])
def test_runs_cover_every_row_once_within_the_budget(lengths, budget):
    runs = int8.runs(np.array(lengths, dtype=int), budget)
    rows = [r for run, _ in runs for r in run]
    assert sorted(rows) == list(range(len(lengths)))
    for run, width in runs:
        assert width == max(max(lengths[r] for r in run), 1)
        assert len(run) * width <= budget or len(run) == 1  # a row longer than the budget runs alone
    widths = [w for _, w in runs]
    assert widths == sorted(widths, reverse=True)  # longest first: runs of similar lengths


def test_thirty_token_texts_run_many_to_a_call():
    """Short texts no longer pay a session call each (recipe 3 ran every text alone)."""
    runs = int8.runs(np.full(64, 30), int8.TOKEN_BUDGET)
    assert len(runs) == -(-64 // (int8.TOKEN_BUDGET // 30))


# -- identity -----------------------------------------------------------------------------------
def test_the_tag_keys_recipe_format_calibration_and_every_library_version(monkeypatch):
    from vectune.embed import _calibration
    from vectune.embed.encoder import int8_recipe, precision_identity

    base = int8.tag()
    assert base.startswith(f"r{int8.RECIPE}-") and int8_recipe("int8") == base
    assert precision_identity("int8") == f"int8-{base}" and int8_recipe("fp32") is None
    ident = int8.identity()
    assert ident["calibration"] == _calibration.CALIBRATION_HASH and ident["format"] == int8.FORMAT
    assert set(ident["versions"]) == {"torch", "transformers", "onnx", "onnxruntime"}
    assert all(ident["versions"].values())
    changed = set()
    for name in ident["versions"]:
        changed.add(int8.tag({**ident, "versions": {**ident["versions"], name: "0.0.1"}}))
    changed.add(int8.tag({**ident, "calibration": "000000000000"}))
    changed.add(int8.tag({**ident, "format": "qdq-u8u8"}))
    monkeypatch.setattr(int8, "RECIPE", int8.RECIPE + 1)
    changed.add(int8.tag())
    assert base not in changed and len(changed) == 7


def test_the_identity_is_read_without_importing_the_libraries():
    """The driver keys caches with it: it must not pay the import of torch or ONNX Runtime."""
    import subprocess
    import sys

    code = ("import sys; from vectune.embed import int8; int8.tag(); "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'transformers', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_stamped_tag_keys_the_cache_it_was_built_with():
    from vectune.embed import EncoderConfig

    mine = EncoderConfig(model_path="/m", fingerprint="fp", cache_root="/cache", precision="int8")
    stamped = EncoderConfig(model_path="/m", fingerprint="fp", cache_root="/cache", precision="int8",
                            int8_tag="r4-0123456789")
    same = EncoderConfig(model_path="/m", fingerprint="fp", cache_root="/cache", precision="int8", int8_tag=int8.tag())
    assert mine.cache_dir == same.cache_dir != stamped.cache_dir


def test_the_calibration_texts_are_fixed_and_drawn_from_no_benchmark():
    """The hash is what the identity records: it must not change by accident, and no SciFact
    text (the data vectune is scored on) is among them."""
    from testdata import SCIFACT
    from vectune.embed._calibration import CALIBRATION_HASH, _digest, calibration_texts
    from vectune.embed._check_sample import check_sample

    texts = calibration_texts()
    assert len(texts) == 96 and len(set(texts)) == 96 and _digest() == CALIBRATION_HASH
    queries, documents, qrels = check_sample()
    assert not set(texts) & (set(queries.values()) | set(documents.values()))  # the check sample is another
    assert all(len(rel) == 1 and next(iter(rel)) in documents for rel in qrels.values())
    if (SCIFACT / "corpus.jsonl").exists():
        corpus = SCIFACT / "corpus.jsonl"
        scifact = set()
        for line in corpus.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            scifact.update(s.strip() for s in (row.get("text") or "").split(". ") if len(s) > 40)
        sentences = {s.strip() for t in [*texts, *documents.values()] for s in t.split(". ")}
        assert not sentences & scifact


# -- where it lives -----------------------------------------------------------------------------
def test_the_user_cache_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert int8.user_cache() == tmp_path / "xdg" / "vectune" / "int8"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec: ignore a relative path
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert int8.user_cache() == tmp_path / "home" / ".cache" / "vectune" / "int8"


@pytest.fixture
def stub_build(monkeypatch):
    """`int8._build` writing a graph file and its metadata as the real one does, counting calls."""
    calls = []

    def build(model_path, fingerprint, folder, ident):
        calls.append(folder)
        (folder / int8.FILE).write_bytes(b"graph")
        int8._write_meta(folder, {"identity": ident, "tag": int8.tag(ident), "fingerprint": fingerprint,
                                  "quality": {"cosine_mean": 0.998}})

    monkeypatch.setattr(int8, "_build", build)
    monkeypatch.setattr(int8, "require_runtime", lambda: None)
    return calls


def test_a_writable_model_holds_its_variant_and_it_is_built_once(tmp_path, stub_build, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    model = tmp_path / "tuned"
    model.mkdir()
    first = int8.variant(str(model), "fp1")
    assert first.built and first.folder == model / "onnx" / f"int8-{int8.identity_key()}"
    again = int8.variant(str(model), "fp1")
    assert not again.built and again.folder == first.folder and len(stub_build) == 1
    assert not (tmp_path / "xdg").exists()


def test_a_packaged_or_read_only_model_gets_its_variant_in_the_user_cache(tmp_path, stub_build, monkeypatch):
    from vectune.embed import resolve_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    packaged = resolve_model("all-MiniLM-L6-v2")
    found = int8.variant(packaged, "fpkg")
    assert found.folder == tmp_path / "xdg" / "vectune" / "int8" / "fpkg" / int8.identity_key()
    assert not (Path(packaged) / "onnx").exists()  # never inside site-packages

    read_only = tmp_path / "ro"
    read_only.mkdir()
    writable = int8._writable
    monkeypatch.setattr(int8, "_writable", lambda folder: not folder.is_relative_to(read_only) and writable(folder))
    found = int8.variant(str(read_only), "fro")
    assert found.folder == tmp_path / "xdg" / "vectune" / "int8" / "fro" / int8.identity_key()
    # every runs folder finds it there: nothing is built per run
    assert not int8.variant(str(read_only), "fro").built and len(stub_build) == 2


def test_a_variant_of_another_model_or_installation_is_not_used(tmp_path, stub_build):
    model = tmp_path / "m"
    model.mkdir()
    found = int8.variant(str(model), "fp1")
    meta = json.loads((found.folder / int8.META).read_text())
    (found.folder / int8.META).write_text(json.dumps({**meta, "fingerprint": "fp0"}))
    assert int8.variant(str(model), "fp1").built  # another model's graph: rebuilt
    other = {**meta["identity"], "versions": {**meta["identity"]["versions"], "onnxruntime": "0.0.1"}}
    (found.folder / int8.META).write_text(json.dumps({**meta, "identity": other}))
    assert int8.variant(str(model), "fp1").built and len(stub_build) == 3


def test_a_stamped_variant_is_found_or_named_missing(tmp_path, stub_build):
    from vectune.errors import ModelError

    model = tmp_path / "m"
    model.mkdir()
    mine = int8.variant(str(model), "fp1")
    assert int8.variant(str(model), "fp1", want=int8.tag()).folder == mine.folder
    old = model / "onnx" / "int8-0123456789"
    old.mkdir(parents=True)
    (old / int8.FILE).write_bytes(b"old graph")
    int8._write_meta(old, {"fingerprint": "fp1", "tag": "r4-0123456789"})
    assert int8.variant(str(model), "fp1", want="r4-0123456789").folder == old
    with pytest.raises(ModelError, match="r4-9999999999 .* is not on this machine"):
        int8.variant(str(model), "fp1", want="r4-9999999999")
    assert len(stub_build) == 1  # a stamped variant is never built


def test_checks_are_appended_to_the_variant_record(tmp_path, stub_build):
    model = tmp_path / "m"
    model.mkdir()
    found = int8.variant(str(model), "fp1")
    for n in range(22):
        int8.record_check(found.folder, {"n": n})
    meta = int8.read_meta(found.folder)
    assert [c["n"] for c in meta["checks"]] == list(range(2, 22)) and meta["fingerprint"] == "fp1"


# -- the verdict and the fallback ---------------------------------------------------------------
def _verdict(fp32: float, int8_: float, tolerance: float = 0.005):
    from vectune.embed.int8_check import Int8Verdict

    return Int8Verdict(sample="validation queries", queries=40, documents=2000, ndcg_fp32=fp32, ndcg_int8=int8_,
                       tolerance=tolerance, variant="r4-0123456789")


def test_a_verdict_passes_within_the_tolerance_only():
    assert _verdict(0.70, 0.696).ok and _verdict(0.70, 0.705).ok and _verdict(0.70, 0.695).ok
    failed = _verdict(0.70, 0.6949)
    assert not failed.ok and failed.drop == pytest.approx(0.0051)
    assert "more than model.int8_tolerance 0.005" in failed.reason and "on 40 validation queries" in failed.reason
    assert failed.to_dict()["ok"] is False and failed.to_dict()["drop"] == failed.drop


def test_the_fallback_goes_through_the_precision_resolver():
    from vectune.precision import int8_fallback
    from vectune.spec import Spec

    spec = Spec.model_validate({"version": 1, "name": "docs", "data": {"corpus": {"path": "c.jsonl"}},
                                "model": {"precision": "int8", "int8_tolerance": 0.005}})
    kept, choice = int8_fallback(spec, _verdict(0.70, 0.698))
    assert kept is spec and choice is None
    fp32, choice = int8_fallback(spec, _verdict(0.70, 0.69))
    assert fp32.model.precision == "fp32" and spec.model.precision == "int8"
    assert (choice.field, choice.requested, choice.resolved) == ("model.precision", "int8", "fp32")
    assert "0.6900 vs fp32 0.7000" in choice.reason and choice.to_dict()["reason"] == choice.reason
    assert fp32.digest() == spec.digest()  # the spec a run names is still the file's; the choice says why
    plain = spec.derived(model=spec.model.model_copy(update={"precision": "fp32"}))
    assert int8_fallback(plain, _verdict(0.70, 0.5)) == (plain, None)


def test_the_tolerance_is_a_checked_spec_field():
    from vectune.errors import SpecError
    from vectune.spec import Spec, validate_dict

    base = {"version": 1, "name": "docs", "data": {"corpus": {"path": "c.jsonl"}}}
    assert Spec.model_validate(base).model.int8_tolerance == 0.005
    with pytest.raises(SpecError, match="int8_tolerance"):
        validate_dict({**base, "model": {"int8_tolerance": -0.1}}, "spec")


def test_model_export_prints_where_the_variant_went_and_how_long_it_took(monkeypatch):
    from typer.testing import CliRunner

    from vectune.cli import app

    result = {"model": "/models/tuned", "fingerprint": "fp1", "precision": "int8-r4-0123456789",
              "path": "/models/tuned/onnx/int8-0123456789/model.onnx", "built": True, "seconds": 41.3,
              "build_seconds": 41.0, "step_seconds": {"export": 9.1}, "checks": [],
              "quality": {"cosine_mean": 0.9981, "cosine_min": 0.997, "texts": 48}}
    from vectune.embed import models

    seen = []
    monkeypatch.setattr(models, "export_int8", lambda model: seen.append(model) or result)
    out = CliRunner().invoke(app, ["model", "export", "/models/tuned", "--precision", "int8"])
    assert out.exit_code == 0, out.output
    assert seen == ["/models/tuned"] and "int8-0123456789/model.onnx" in out.output and "41.3 s" in out.output
    as_json = CliRunner().invoke(app, ["model", "export", "/models/tuned", "--json"])
    assert json.loads(as_json.stdout)["path"] == result["path"]
    assert CliRunner().invoke(app, ["model", "export", "m", "--precision", "fp16"]).exit_code == 2


def _echo_graph(path: Path) -> Path:
    """A graph whose `last_hidden_state` is its input ids as floats, [batch, tokens, 1]."""
    import onnx
    from onnx import TensorProto, helper

    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "tokens", 1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [2])
    nodes = [helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["attention_mask", "attention_mask"], ["unused"]),
             helper.make_node("Unsqueeze", ["f", "axes"], ["last_hidden_state"])]
    graph = helper.make_graph(nodes, "echo", [ids, mask], [out], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("padding", ["right", "left"])
def test_a_batch_runs_in_calls_cut_to_their_rows_unless_padded_on_the_left(tmp_path, padding):
    pytest.importorskip("onnxruntime")
    import torch

    lengths = [3, 9, 2, 9, 5]
    ids = np.zeros((5, 9), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        cols = slice(0, n) if padding == "right" else slice(9 - n, 9)
        ids[row, cols] = 100 * (row + 1) + np.arange(n)
        mask[row, cols] = 1
    session = int8.Session(_echo_graph(tmp_path / "echo.onnx"), threads=1, token_budget=18)
    calls = []
    run = session.session.run
    session.session = type("Counting", (), {"run": lambda self, out, feed: calls.append(feed["input_ids"].shape)
                                            or run(out, feed)})()
    hidden = session({"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)})
    got = hidden["last_hidden_state"].numpy()[..., 0]
    np.testing.assert_array_equal(got * mask, ids * mask)  # every row's tokens where they came from
    if padding == "right":  # two 9-token rows, then 5 + 3 + 2 (3 x 5 <= 18), each call as wide as its longest
        assert calls == [(2, 9), (3, 5)]
    else:
        assert calls == [(5, 9)]


def test_a_variant_in_the_user_cache_serves_a_writable_copy_of_the_same_model(tmp_path, stub_build, monkeypatch):
    """Same fingerprint, same weights: a copy of a model whose variant is cached is not built again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    read_only, copy = tmp_path / "ro", tmp_path / "copy"
    read_only.mkdir()
    copy.mkdir()
    writable = int8._writable
    monkeypatch.setattr(int8, "_writable", lambda folder: not folder.is_relative_to(read_only) and writable(folder))
    cached = int8.variant(str(read_only), "fp1")
    assert int8.variant(str(copy), "fp1").folder == cached.folder and len(stub_build) == 1


def test_running_a_variant_does_not_import_onnx(tmp_path):
    """Only a build needs the onnx package; its import cost seconds in every encoder actor."""
    pytest.importorskip("onnxruntime")
    import subprocess
    import sys

    model = tmp_path / "m"
    folder = model / "onnx" / f"int8-{int8.identity_key()}"
    folder.mkdir(parents=True)
    _echo_graph(folder / int8.FILE)
    int8._write_meta(folder, {"identity": int8.identity(), "tag": int8.tag(), "fingerprint": "fp1"})
    code = ("import sys; from vectune.embed import int8; v = int8.variant(sys.argv[1], 'fp1'); "
            "int8.Session(v.graph, threads=1); print(v.built, 'onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
