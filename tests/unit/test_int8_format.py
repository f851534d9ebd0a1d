"""int8 on CPUs without VNNI (issue 28, item 7; issue 31 for the static recipe 4).

There ONNX Runtime's u8 x s8 kernels sum pairs of products into int16 with saturation
(VPMADDUBSW): every int8 session asks ONNX Runtime for its exact U8U8 kernels on such CPUs
(`session.x64quantprecision`), so every CPU kind computes the same vectors and shares one
identity (`r4-<key>`; older recipes' vectors are never reused). The
CPU is faked with /proc/cpuinfo texts of real machines (`vectune.precision.CPUINFO`); the
emulated AVX2 run is in tests/integration/test_int8.py.
"""

from __future__ import annotations

import json

import pytest

_BASE = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht "
         "syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl cpuid pni pclmulqdq ssse3 fma cx16 pcid sse4_1 "
         "sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch fsgsbase "
         "bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 arat")
_AVX512 = "avx512f avx512dq avx512cd avx512bw avx512vl"

#: model name, flags: what the format is chosen from
CPUS = {
    # AMD EPYC (Zen 3): AVX2, no VNNI, the CPU of issue 28's report (cosine 0.9960 with u8s8)
    "epyc_avx2": ("AMD EPYC 7B13", f"{_BASE} clzero xsaveerptr vaes vpclmulqdq rdpid fsrm"),
    # Intel Xeon Skylake-SP: AVX-512 without VNNI, the same int16 saturation
    "xeon_avx512": ("Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz", f"{_BASE} {_AVX512}"),
    # Intel Xeon Cascade Lake: AVX-512 VNNI
    "xeon_vnni": ("Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz", f"{_BASE} {_AVX512} avx512_vnni"),
    # Intel Xeon Sapphire Rapids: VNNI, bf16, AMX
    "xeon_amx": ("Intel(R) Xeon(R) Platinum 8488C", f"{_BASE} {_AVX512} avx512_vnni avx512_bf16 amx_bf16 "
                                                   "amx_tile amx_int8"),
    # Intel Alder Lake: AVX-VNNI (VEX encoded), no AVX-512
    "alder_lake": ("12th Gen Intel(R) Core(TM) i7-12700", f"{_BASE} avx_vnni"),
}
#: ARM (Graviton 2): `Features`, no `flags`
GRAVITON = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics " \
           "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\n"


def _fake(monkeypatch, tmp_path, cpu: str) -> None:
    import vectune.precision as precision

    if cpu == "graviton":
        text = GRAVITON
    else:
        model, flags = CPUS[cpu]
        text = f"processor\t: 0\nvendor_id\t: x\nmodel name\t: {model}\nflags\t\t: {flags}\n\n" \
               f"processor\t: 1\nmodel name\t: {model}\nflags\t\t: {flags}\n"
    path = tmp_path / f"cpuinfo-{cpu}"
    path.write_text(text)
    monkeypatch.setattr(precision, "CPUINFO", path)
    precision._cpu_info_at.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_cpu_info():
    import vectune.precision as precision

    precision._cpu_info_at.cache_clear()
    yield
    precision._cpu_info_at.cache_clear()  # the real CPU again for later tests


@pytest.mark.parametrize("cpu, kind, vnni", [
    ("epyc_avx2", "AVX2", False), ("xeon_avx512", "AVX-512", False), ("xeon_vnni", "AVX-512", True),
    ("xeon_amx", None, True), ("alder_lake", "AVX2", True), ("graviton", "ARM", False)])
def test_the_fixtures_are_the_cpus_they_name(monkeypatch, tmp_path, cpu, kind, vnni):
    from vectune.precision import cpu_info

    _fake(monkeypatch, tmp_path, cpu)
    assert cpu_info().vnni is vnni
    if kind:
        assert cpu_info().kind == kind


@pytest.mark.parametrize("cpu, exact", [("xeon_vnni", True), ("xeon_amx", True), ("alder_lake", True),
                                        ("graviton", True), ("epyc_avx2", False), ("xeon_avx512", False)])
def test_which_cpus_multiply_int8_exactly_as_built(monkeypatch, tmp_path, cpu, exact):
    from vectune.embed import int8

    _fake(monkeypatch, tmp_path, cpu)
    assert int8.exact_u8s8() is exact


def test_unknown_flags_are_not_assumed_exact(monkeypatch, tmp_path):
    """No /proc/cpuinfo (not Linux): VNNI is not assumed, the exact kernels are asked for."""
    import vectune.precision as precision
    from vectune.embed import int8

    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "missing")
    precision._cpu_info_at.cache_clear()
    assert not int8.exact_u8s8()


def test_every_cpu_kind_has_one_int8_identity_and_an_older_recipe_is_never_reused(monkeypatch, tmp_path):
    """Every CPU computes the same int8 vectors (exact products everywhere), so the identity is
    the same on all of them (a mixed cluster shares its caches); a collection stamped with
    another variant (recipe 3's `3`, or another recipe's or library version's tag) is rebuilt,
    not synced, on every CPU kind, and its cache key is another."""
    from vectune.embed import EncoderConfig, int8
    from vectune.embed.encoder import int8_recipe, precision_identity
    from vectune.index import collections as cols
    from vectune.index.stage import vector_settings
    from vectune.spec import Spec

    spec = Spec.model_validate({"version": 1, "name": "docs", "data": {"corpus": {"path": "c.jsonl"}},
                                "runtime": {"runs": str(tmp_path / "runs")}, "model": {"precision": "int8"}})
    config = EncoderConfig(model_path="/m", fingerprint="fp", cache_root="/cache", precision="int8")
    seen = set()
    for cpu in ("xeon_vnni", "epyc_avx2", "xeon_avx512", "graviton"):
        _fake(monkeypatch, tmp_path, cpu)
        stamp = {**vector_settings(spec, "fp1"), "dimension": 384, "state": "ready"}
        seen.add((precision_identity("int8"), int8_recipe("int8"), config.cache_dir, stamp["int8_recipe"]))
        recipe3 = {**stamp, "int8_recipe": 3}  # what every int8 collection built before recipe 4 carries
        assert cols.full_build_reason(recipe3, vector_settings(spec, "fp1")) == \
            f"int8_recipe changed: live 3, now {int8.tag()!r}"
        assert cols.full_build_reason(stamp, vector_settings(spec, "fp1")) is None
    assert len(seen) == 1 and int8.RECIPE == 4
    (identity, recipe, cache, stamped), = seen
    monkeypatch.setattr(int8, "RECIPE", 5)  # the cache folder keys the recipe: another recipe's is another
    assert EncoderConfig(model_path="/m", fingerprint="fp", cache_root="/cache", precision="int8").cache_dir != cache
    monkeypatch.undo()
    assert identity == f"int8-{int8.tag()}" and recipe == stamped == int8.tag() and recipe.startswith("r4-")
    assert cache == EncoderConfig(model_path="/m", fingerprint="fp", cache_root="/cache", precision="int8").cache_dir


def test_fp32_and_bf16_identities_do_not_depend_on_the_cpu(monkeypatch, tmp_path):
    from vectune.embed.encoder import int8_recipe, precision_identity

    for cpu in ("epyc_avx2", "xeon_vnni"):
        _fake(monkeypatch, tmp_path, cpu)
        assert [precision_identity(p) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
        assert int8_recipe("fp32") is None


@pytest.mark.parametrize("cpu, option", [("epyc_avx2", "1"), ("xeon_avx512", "1"), ("xeon_vnni", None),
                                         ("xeon_amx", None)])
def test_sessions_ask_for_exact_products_only_where_int8_products_saturate(monkeypatch, tmp_path, cpu, option):
    """Where VNNI is, ONNX Runtime would still convert the weights if asked (measured: 27% slower,
    the same vectors), so it is asked only on CPUs without it."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import TensorProto, helper

    from vectune.embed import int8

    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"])
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.INT64, ["batch", "tokens"])
    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["last_hidden_state"])], "g", [ids], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "tiny.onnx")
    _fake(monkeypatch, tmp_path, cpu)
    options = int8.Session(tmp_path / "tiny.onnx", threads=1).session.get_session_options()
    if option is None:
        with pytest.raises(RuntimeError, match="does not have configuration"):
            options.get_session_config_entry(int8.X64_QUANT_PRECISION)
    else:
        assert options.get_session_config_entry(int8.X64_QUANT_PRECISION) == option
