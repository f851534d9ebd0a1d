"""`auto` is decided by a Ray worker, not by the driver (vectune.precision, real local Ray)."""

from __future__ import annotations

import pytest

from vectune import precision
from vectune.spec import load_spec

pytestmark = pytest.mark.ray


def test_a_ray_worker_decides_auto_not_the_driver(ray_local, tiny_beir, tmp_path, monkeypatch):
    # the driver believes it runs on an AVX2 CPU; the worker reads the machine's real flags
    real = precision.parse_cpuinfo(open("/proc/cpuinfo").read())
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2\n")
    monkeypatch.setattr(precision, "CPUINFO", fake)
    precision._cpu_info_at.cache_clear()
    precision._decided.clear()
    try:
        assert precision.cpu_info().kind == "AVX2"
        spec = load_spec(tiny_beir.spec_path)
        resolved, choices = precision.resolve_spec(spec)
        assert choices["train.precision"].cpu == real.kind  # the worker's CPU, not the driver's belief
        assert resolved.train.precision == ("bf16" if real.native_bf16 else "fp32")
        assert resolved.model.precision == "fp32"
    finally:
        precision._cpu_info_at.cache_clear()
        precision._decided.clear()
