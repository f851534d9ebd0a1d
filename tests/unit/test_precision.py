"""`precision: auto` and the one resolver (vectune.precision): faked CPU flags, real torch.

The CPU fixtures are the `flags` lines of real machines this project runs on (trimmed to
what matters plus a few neighbours): a 2-core AMD EPYC with AVX2 only, an Intel Xeon with
AVX-512 BF16 (Cooper Lake), a Sapphire Rapids Xeon with AMX, and an ARM Neoverse V1.
"""

from __future__ import annotations

import logging

import pytest
import yaml

from vectune import precision
from vectune.spec import load_spec

AVX2_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm \
constant_tsc rep_good nopl nonstop_tsc cpuid pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c \
rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext ssbd ibrs ibpb stibp \
vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 clzero \
xsaveerptr arat npt nrip_save umip rdpid

processor\t: 1
flags\t\t: fpu avx2
"""
AVX512_BF16_XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) CPU @ 2.80GHz
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl \
avx512_vnni avx512_bf16 arat
"""
AMX_XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw avx512vl avx_vnni avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8
"""
ARM_V1 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm sve bf16 i8mm
"""


@pytest.fixture
def cpu(tmp_path, monkeypatch):
    """Point the resolver at a fake /proc/cpuinfo: `cpu(AVX2_EPYC)`; caches cleared around it."""

    def use(text: str):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(precision, "CPUINFO", path)
        _clear()
        return precision.cpu_info()

    _clear()
    yield use
    _clear()


def _clear():
    precision._cpu_info_at.cache_clear()
    precision._decided.clear()
    precision._warn_once.cache_clear()


@pytest.mark.parametrize("text, kind, native, vnni", [
    (AVX2_EPYC, "AVX2", False, False),
    (AVX512_BF16_XEON, "AVX-512 BF16", True, True),
    (AMX_XEON, "AVX-512 AMX", True, True),
    (ARM_V1, "ARM BF16", True, False),
    ("processor: 0\n", "unknown", False, False),
])
def test_cpu_kind_comes_from_the_flags(cpu, text, kind, native, vnni):
    info = cpu(text)
    assert (info.kind, info.native_bf16, info.vnni) == (kind, native, vnni)


def test_a_machine_without_cpuinfo_assumes_nothing_native(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "absent")
    precision._cpu_info_at.cache_clear()
    try:
        info = precision.cpu_info()
        assert info.flags == frozenset() and not info.native_bf16
        assert precision.choose("train.precision", "auto").resolved == "fp32"
    finally:
        precision._cpu_info_at.cache_clear()


@pytest.mark.parametrize("text, train", [(AVX2_EPYC, "fp32"), (AVX512_BF16_XEON, "bf16"), (AMX_XEON, "bf16"),
                                         (ARM_V1, "bf16")])
def test_auto_trains_in_bf16_only_where_the_cpu_has_it_and_encodes_in_fp32_on_every_cpu(cpu, text, train):
    info = cpu(text)
    t = precision.choose("train.precision", "auto", cpu=info)
    m = precision.choose("model.precision", "auto", cpu=info)
    assert (t.resolved, t.device, t.cpu) == (train, "cpu", info.kind)
    assert (m.resolved, m.device) == ("fp32", "cpu")
    assert t.warning() is None and m.warning() is None  # auto never warns


@pytest.mark.parametrize("cuda, train, model", [((True, True), "bf16", "fp16"), ((True, False), "fp32", "fp16"),
                                                ((False, False), "fp32", "fp32")])
def test_auto_on_a_gpu_follows_the_device(cpu, cuda, train, model):
    info = cpu(AVX2_EPYC)  # the host CPU does not matter once a GPU computes
    assert precision.choose("train.precision", "auto", want_gpu=True, cpu=info, cuda=cuda).resolved == train
    assert precision.choose("model.precision", "auto", want_gpu=True, cpu=info, cuda=cuda).resolved == model


def test_a_gpu_asked_for_but_absent_resolves_for_the_cpu_with_real_torch(cpu):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cpu(AVX2_EPYC)
    choice = precision.choose("model.precision", "auto", want_gpu=True)  # real torch: no CUDA here
    assert (choice.resolved, choice.device) == ("fp32", "cpu")


def test_explicit_values_are_kept_and_emulated_bf16_gets_a_warning_naming_field_cpu_and_cost(cpu):
    info = cpu(AVX2_EPYC)
    t = precision.choose("train.precision", "bf16", cpu=info)
    assert t.resolved == "bf16"  # honoured: a user may want it for parity
    assert t.warning() == ("train.precision bf16: bf16 is emulated on this CPU (AVX2): about 15x slower to train "
                           "than fp32; use precision: auto or fp32")
    m = precision.choose("model.precision", "bf16", cpu=info)
    assert "model.precision" in m.warning() and "encode" in m.warning()
    assert precision.choose("train.precision", "fp32", cpu=info).warning() is None
    native = cpu(AVX512_BF16_XEON)
    assert precision.choose("train.precision", "bf16", cpu=native).warning() is None
    assert precision.choose("model.precision", "int8", cpu=native).resolved == "int8"


def _spec(tiny_beir, **sets):
    return load_spec(tiny_beir.spec_path, overrides=sets)


def test_resolve_spec_replaces_auto_and_keeps_the_source(cpu, tiny_beir):
    cpu(AVX512_BF16_XEON)
    spec = _spec(tiny_beir)
    assert (spec.model.precision, spec.train.precision) == ("auto", "auto")  # the defaults
    resolved, choices = precision.resolve_spec(spec)
    assert (resolved.model.precision, resolved.train.precision) == ("fp32", "bf16")
    assert resolved.source == spec.source and resolved.name == spec.name
    assert {f: c.requested for f, c in choices.items()} == {"model.precision": "auto", "train.precision": "auto"}
    assert "auto" not in resolved.canonical()["model"]["precision"]
    # the identity of the vectors is what an fp32 spec always had: old caches and stamps stay valid
    assert resolved.section_digest("model") == _spec(tiny_beir, **{"model.precision": "fp32"}).section_digest("model")
    assert precision.resolved(resolved) is resolved  # nothing left to decide: the same object
    # the spec a run, a model card and a collection stamp name is the file's, `auto` and all;
    # stage inputs and identities key the resolved values
    assert resolved.digest() == spec.digest() != _spec(tiny_beir, **{"train.precision": "bf16"}).digest()
    assert resolved.section_digest("train") != spec.section_digest("train")
    renamed = resolved.derived(evaluate=resolved.evaluate.model_copy(update={"k": 50}))
    assert renamed.digest() != spec.digest()  # a later change is a change


def test_a_stage_that_only_encodes_decides_model_precision_alone(cpu, tiny_beir):
    """mine, evaluate and re-index read `model.precision` only: `resolved(spec, train=False)`
    decides that field and never `train.precision` (with Ray up, each decision is a Ray task:
    the untouched-file sync paid one for a field it never reads)."""
    cpu(AVX512_BF16_XEON)
    spec = _spec(tiny_beir)
    encoding = precision.resolved(spec, train=False)
    assert (encoding.model.precision, encoding.train.precision) == ("fp32", "auto")
    assert set(precision._decided) == {("model.precision", "auto", False)}
    explicit = _spec(tiny_beir, **{"model.precision": "fp32"})
    assert precision.resolved(explicit, train=False) is explicit  # nothing to decide, nothing asked
    assert precision.resolved(spec).train.precision == "bf16"  # the train stage still decides its own


def test_the_emulated_bf16_warning_is_logged_exactly_once_per_process(cpu, tiny_beir, caplog):
    cpu(AVX2_EPYC)
    spec = _spec(tiny_beir, **{"train.precision": "bf16"})
    with caplog.at_level(logging.WARNING, logger="vectune"):
        for _ in range(3):
            resolved, _ = precision.resolve_spec(spec)
            precision.resolved(spec)
    assert resolved.train.precision == "bf16"
    warnings = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    assert warnings == ["train.precision bf16: bf16 is emulated on this CPU (AVX2): about 15x slower to train than "
                        "fp32; use precision: auto or fp32"]


def test_validate_warns_about_explicit_bf16_on_a_cpu_without_it(cpu, tiny_beir, caplog):
    from vectune import pipeline

    cpu(AVX2_EPYC)
    with caplog.at_level(logging.WARNING, logger="vectune"):
        out = pipeline.validate(_spec(tiny_beir, **{"train.precision": "bf16"}), data=False)
    assert out["precision"] == {"model.precision": "fp32", "train.precision": "bf16"}
    assert [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()] == [
        "train.precision bf16: bf16 is emulated on this CPU (AVX2): about 15x slower to train than fp32; "
        "use precision: auto or fp32"]
    caplog.clear()
    cpu(AVX512_BF16_XEON)
    with caplog.at_level(logging.WARNING, logger="vectune"):
        pipeline.validate(_spec(tiny_beir, **{"train.precision": "bf16"}), data=False)
    assert not [r for r in caplog.records if "emulated" in r.getMessage()]


def test_the_shipped_spec_never_trains_or_encodes_in_bf16_on_avx2_and_render_says_so(cpu):
    from pathlib import Path

    from typer.testing import CliRunner

    from vectune.cli import app

    shipped = Path(__file__).resolve().parents[2] / "specs" / "scifact.yaml"
    cpu(AVX2_EPYC)
    resolved, _ = precision.resolve_spec(load_spec(shipped))
    assert (resolved.model.precision, resolved.train.precision) == ("fp32", "fp32")
    result = CliRunner().invoke(app, ["render", str(shipped)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip().startswith("precision:")]
    assert lines == ["  precision: auto  # here: fp32 (auto: fp32 on CPUs (int8 is an explicit choice))",
                     "  precision: auto  # here: fp32 (auto: no native bf16 on this CPU (AVX2))"]
    assert yaml.safe_load(result.stdout)["train"]["precision"] == "auto"  # still a valid spec to feed back
    cpu(AMX_XEON)
    result = CliRunner().invoke(app, ["render", str(shipped)])
    assert "  precision: auto  # here: bf16 (auto: native bf16 on this CPU (AVX-512 AMX))" in result.stdout


def test_the_run_record_runs_listing_and_tracking_params_carry_the_resolved_value(cpu, tiny_beir):
    from vectune import pipeline, tracking
    from vectune.runs import Run

    cpu(AVX2_EPYC)
    spec = _spec(tiny_beir)
    run = Run.create(spec, "20261205-000000-prec")
    resolved = pipeline.resolve_precision(spec, run)
    record = Run.open(spec, run.id).manifest["precision"]
    assert record["train.precision"] == {"field": "train.precision", "requested": "auto", "resolved": "fp32",
                                         "device": "cpu", "cpu": "AVX2", "native_bf16": False,
                                         "reason": "auto: no native bf16 on this CPU (AVX2)"}
    assert record["model.precision"]["resolved"] == "fp32"
    row = next(r for r in pipeline.runs(spec)["runs"] if r["run_id"] == run.id)
    assert row["precision"] == {"model.precision": "fp32", "train.precision": "fp32"}
    params = dict(tracking._flatten(tracking._with_resolved_precision(spec.canonical(), run.manifest)))
    assert params["model.precision"] == "fp32" and params["train.precision"] == "fp32"
    assert "auto" not in {params["model.precision"], params["train.precision"]}
    assert resolved.train.precision == "fp32"


def test_validate_and_runs_say_what_auto_is_on_this_machine(cpu, tiny_beir):
    from typer.testing import CliRunner

    from vectune import pipeline
    from vectune.cli import app
    from vectune.runs import Run

    cpu(AVX2_EPYC)
    out = CliRunner().invoke(app, ["validate", str(tiny_beir.spec_path), "--no-data"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "on this machine: model.precision fp32, train.precision fp32" in " ".join(out.stdout.split())
    spec = _spec(tiny_beir)
    pipeline.resolve_precision(spec, Run.create(spec, "20261205-000001-prec"))
    table = CliRunner().invoke(app, ["runs", str(tiny_beir.spec_path)], env={"COLUMNS": "250"})
    assert table.exit_code == 0, table.output
    assert "precision" in table.stdout and "fp32/fp32" in table.stdout


def test_a_tuned_model_whose_int8_loses_on_validation_is_encoded_in_fp32_after_training(cpu, tiny_beir):
    """The train stage records the kept model's int8 check (`check_int8` on the validation
    queries); the stages after it read the spec from `pipeline._int8_or_fp32`: fp32 with the
    reason on record when int8 lost more than model.int8_tolerance, int8 otherwise."""
    from vectune import pipeline
    from vectune.runs import Run

    cpu(AMX_XEON)
    spec = _spec(tiny_beir, **{"model.precision": "int8", "model.int8_tolerance": 0.005})
    checked = {"sample": "validation queries", "queries": 80, "documents": 2000, "ndcg_fp32": 0.7804,
               "ndcg_int8": 0.7712, "tolerance": 0.005, "variant": "r4-0123456789", "seconds": 41.0,
               "drop": 0.0092, "ok": False, "date": "2026-12-05T23:00:00+0000"}
    run = Run.create(spec, "20261205-000002-int8")
    with run.stage("train") as outputs:
        outputs.update(model="m", int8=checked)
    after = pipeline._int8_or_fp32(spec, Run.open(spec, run.id))
    assert after.model.precision == "fp32" and spec.model.precision == "int8"
    record = Run.open(spec, run.id).manifest["precision"]["model.precision"]
    assert (record["requested"], record["resolved"]) == ("int8", "fp32")
    assert "0.7712 vs fp32 0.7804 on 80 validation queries" in record["reason"]
    assert "more than model.int8_tolerance 0.005" in record["reason"]

    passed = Run.create(spec, "20261205-000003-int8")
    with passed.stage("train") as outputs:
        outputs.update(model="m", int8={**checked, "ndcg_int8": 0.7790, "drop": 0.0014, "ok": True})
    assert pipeline._int8_or_fp32(spec, passed).model.precision == "int8"
    unchecked = Run.create(spec, "20261205-000004-int8")  # no validation queries: nothing measured here
    assert pipeline._int8_or_fp32(spec, unchecked).model.precision == "int8"
    fp32 = _spec(tiny_beir, **{"model.precision": "fp32"})
    assert pipeline._int8_or_fp32(fp32, run) is fp32
