"""The one resolver for the precision a stage really runs in.

`model.precision` (encoding) and `train.precision` (training) accept `auto`, the default.
`auto` is decided on the machine that runs the stage, from what its hardware does natively:

- training: bf16 where bf16 is native (a CUDA device that supports it, or a CPU with
  `avx512_bf16` or `amx_bf16`; on ARM the `bf16` feature), fp32 everywhere else: on a CPU
  without it bf16 is emulated, measured 15x slower to train than fp32 on an AVX2 EPYC
  (../README.md, "Precision");
- encoding: fp32 on CPUs (int8 is a quality trade-off, so it stays an explicit choice), fp16
  on GPUs.

On a Ray cluster a small probe task with the stage's resources (its GPUs) answers, so a
worker decides, not the driver (a head node without GPUs, or a laptop that submits, would
decide wrongly). Only resolved values reach cache keys, collection stamps, score digests,
the run's record and MLflow: `resolve_spec` returns the spec with `auto` replaced, and
`Choice.to_dict` is what the run manifest keeps under `precision`.

CPU features are read from /proc/cpuinfo (its `flags`, or `Features` on ARM), never from
private torch functions.
"""

from __future__ import annotations

import functools
import logging
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("vectune")

#: where the CPU's feature flags are read (a module attribute, so tests can point it at a fixture)
CPUINFO = Path("/proc/cpuinfo")
#: seconds the driver waits for a worker to answer the probe (a cluster without the
#: resources the stage asks for never answers: that is reported, not waited on for ever)
PROBE_TIMEOUT = 180.0

#: measured cost of emulated bf16 against fp32 (2 threads, all-MiniLM-L6-v2, 48 x 256 tokens,
#: AVX2 EPYC without native bf16): forward + backward 226-229 s vs 15.0 s, encoding 28.6 vs 4.8 s
_EMULATED_COST = {"train.precision": "about 15x slower to train than fp32",
                  "model.precision": "about 6x slower to encode than fp32"}


@dataclass(frozen=True)
class CpuInfo:
    """What vectune needs to know of a CPU: its feature flags and a short name for messages."""

    flags: frozenset[str]
    model: str = ""

    @property
    def native_bf16(self) -> bool:
        return bool({"avx512_bf16", "amx_bf16"} & self.flags) or (self._arm and "bf16" in self.flags)

    @property
    def vnni(self) -> bool:
        """int8 dot products without saturation (VNNI: VPDPBUSD), AVX-512 or AVX encoded, or AMX."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    @property
    def _arm(self) -> bool:
        return "asimd" in self.flags

    @property
    def kind(self) -> str:
        """`AVX-512 AMX`, `AVX-512 BF16`, `AVX-512`, `AVX2`, `ARM`, `ARM BF16`, or `unknown`."""
        f = self.flags
        if "amx_bf16" in f:
            return "AVX-512 AMX"
        if "avx512_bf16" in f:
            return "AVX-512 BF16"
        if "avx512f" in f:
            return "AVX-512"
        if "avx2" in f:
            return "AVX2"
        if self._arm:
            return "ARM BF16" if "bf16" in f else "ARM"
        return "unknown"


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor's flags (x86 `flags`, ARM `Features`) and model name."""
    flags: frozenset[str] = frozenset()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    return CpuInfo(flags=flags, model=model)


@functools.cache
def _cpu_info_at(path: str) -> CpuInfo:
    try:
        return parse_cpuinfo(Path(path).read_text(encoding="utf-8", errors="replace"))
    except OSError:  # not Linux: no flags, so nothing is assumed native
        return CpuInfo(flags=frozenset(), model=platform.processor())


def cpu_info() -> CpuInfo:
    """This machine's CPU (read once per process)."""
    return _cpu_info_at(str(CPUINFO))


@dataclass(frozen=True)
class Choice:
    """What one precision field resolved to, where and why: the run's record of it."""

    field: str
    requested: str
    resolved: str
    device: str  # "cpu" or "cuda"
    cpu: str  # the CPU kind of the machine that decided
    native_bf16: bool  # the device computes bf16 natively
    reason: str

    @property
    def emulated_bf16(self) -> bool:
        return self.resolved == "bf16" and self.device == "cpu" and not self.native_bf16

    def warning(self) -> str | None:
        """The warning an explicit bf16 on a CPU without native bf16 deserves (None otherwise)."""
        if not self.emulated_bf16:
            return None
        return (f"{self.field} bf16: bf16 is emulated on this CPU ({self.cpu}): "
                f"{_EMULATED_COST.get(self.field, 'much slower than fp32')}; use precision: auto or fp32")

    def to_dict(self) -> dict:
        return asdict(self)


def _cuda(want_gpu: bool) -> tuple[bool, bool]:
    """(a CUDA device is here, it computes bf16 natively) when the stage asks for a GPU."""
    if not want_gpu:
        return False, False
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False, False
    if not torch.cuda.is_available():
        return False, False
    return True, bool(torch.cuda.is_bf16_supported())


def choose(field: str, requested: str, *, want_gpu: bool = False, cpu: CpuInfo | None = None,
           cuda: tuple[bool, bool] | None = None) -> Choice:
    """Resolve `requested` for `field` ("train.precision" or "model.precision") on this machine.

    `want_gpu`: the stage asks for GPUs (only then is CUDA looked at). `cpu` and `cuda`
    default to this machine's.
    """
    cpu = cpu or cpu_info()
    has_cuda, cuda_bf16 = cuda if cuda is not None else _cuda(want_gpu)
    device = "cuda" if has_cuda else "cpu"
    native = cuda_bf16 if has_cuda else cpu.native_bf16
    where = "this GPU" if has_cuda else f"this CPU ({cpu.kind})"
    if requested != "auto":
        value, reason = requested, "asked for explicitly"
        if requested == "bf16":
            reason += "; native bf16 on " + where if native else f"; no native bf16 on {where}: emulated"
    elif field == "train.precision":
        value, reason = ("bf16", f"auto: native bf16 on {where}") if native else \
            ("fp32", f"auto: no native bf16 on {where}")
    elif has_cuda:
        value, reason = "fp16", "auto: fp16 on GPUs"
    else:
        value, reason = "fp32", "auto: fp32 on CPUs (int8 is an explicit choice)"
    return Choice(field, requested, value, device, cpu.kind, native, reason)


def _probe(fields: tuple[tuple[str, str, bool], ...]) -> list[Choice]:
    """Runs where the stage runs (a Ray task with the stage's resources, or this process)."""
    return [choose(field, requested, want_gpu=gpu) for field, requested, gpu in fields]


def _encoding_gpus(spec) -> bool:
    return any(g > 0 for g in (spec.mine.num_gpus, spec.evaluate.num_gpus, spec.index.num_gpus))


#: what this process has decided, by (field, requested, wants a GPU): once per run, not per stage
_decided: dict[tuple[str, str, bool], Choice] = {}


def _decide(fields: list[tuple[str, str, bool]]) -> list[Choice]:
    """Each field's choice: decided earlier in this process, else by a Ray worker with the
    stage's resources when Ray runs, else by this process."""
    missing = [f for f in fields if f not in _decided]
    if missing:
        for choice, key in zip(_ask(missing), missing):
            _decided[key] = choice
    return [_decided[f] for f in fields]


def _ask(fields: list[tuple[str, str, bool]]) -> list[Choice]:
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        ray = None
    if ray is None or not ray.is_initialized():
        return _probe(tuple(fields))
    from vectune.errors import ClusterError

    out: list[Choice] = []
    for gpu in sorted({g for _, _, g in fields}):
        group = tuple(f for f in fields if f[2] == gpu)
        task = ray.remote(_probe).options(num_cpus=0.01, num_gpus=1 if gpu else 0, max_retries=1)
        try:
            out += ray.get(task.remote(group), timeout=PROBE_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            names = ", ".join(f for f, _, _ in group)
            raise ClusterError(f"no Ray worker {'with a GPU ' if gpu else ''}answered within {PROBE_TIMEOUT:.0f} s "
                               f"to decide {names}: the cluster lacks the resources the spec asks for") from None
    order = [f for f, _, _ in fields]
    return sorted(out, key=lambda c: order.index(c.field))  # one choice per field, in the order asked


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def _fields(spec, *, train: bool = True, model: bool = True) -> list[tuple[str, str, bool]]:
    """(field, requested value, whether its stages ask for GPUs) of each precision field."""
    return ([("model.precision", spec.model.precision, _encoding_gpus(spec))] if model else []) + \
        ([("train.precision", spec.train.precision, spec.train.gpus_per_worker > 0)] if train else [])


def resolve_spec(spec, *, train: bool = True, model: bool = True):
    """(`spec` with every `auto` precision resolved, the choices by field).

    Call it once per run, after Ray started (a worker decides) and before any stage reads a
    precision. Explicit bf16 on a CPU without native bf16 is kept, with one warning.
    """
    choices = {c.field: c for c in _decide(_fields(spec, train=train, model=model))}
    for choice in choices.values():
        message = choice.warning()
        if message:
            _warn_once(message)
    update = {}
    if "model.precision" in choices and spec.model.precision == "auto":
        update["model"] = spec.model.model_copy(update={"precision": choices["model.precision"].resolved})
    if "train.precision" in choices and spec.train.precision == "auto":
        update["train"] = spec.train.model_copy(update={"precision": choices["train.precision"].resolved})
    if update:
        resolved = spec.model_copy(update=update)
        resolved._source = spec._source
        resolved._requested = {**spec._requested, **{c.field: (c.requested, c.resolved) for c in choices.values()
                                                     if c.requested != c.resolved}}
        spec = resolved
    return spec, choices


def local_choices(spec) -> dict[str, Choice]:
    """What `auto` (or an explicit bf16) means on this machine, without Ray (`render`, `validate`)."""
    return {c.field: c for c in _probe(tuple(_fields(spec)))}


def resolved(spec, *, train: bool = True):
    """`spec` itself when nothing in it says `auto`, else `resolve_spec(spec)[0]`: what a stage
    called on its own (not through `vectune.pipeline`) does before reading a precision.

    `train=False`: a stage that only encodes (mine, evaluate, re-index) leaves
    `train.precision` as it is, so it never asks a Ray worker about a precision it does not use."""
    if spec.model.precision != "auto" and (not train or spec.train.precision != "auto"):
        return spec
    return resolve_spec(spec, train=train)[0]


def int8_fallback(spec, verdict):
    """(`spec` encoding in fp32, the Choice that says why) when `verdict`
    (`vectune.embed.int8_check.check_int8`) finds the model's int8 variant more than
    `model.int8_tolerance` below fp32; (`spec`, None) when int8 stays (the verdict passed,
    or the spec does not encode in int8). Said once as a warning; the Choice is what the run
    records under `precision` (`Choice.to_dict`)."""
    if spec.model.precision != "int8" or verdict.ok:
        return spec, None
    cpu = cpu_info()
    choice = Choice("model.precision", "int8", "fp32", "cpu", cpu.kind, cpu.native_bf16,
                    f"int8 measured below tolerance, fp32 instead: {verdict.reason}")
    _warn_once(f"model.precision int8 -> fp32: {verdict.reason}")
    resolved = spec.model_copy(update={"model": spec.model.model_copy(update={"precision": "fp32"})})
    resolved._source = spec._source
    resolved._requested = {**spec._requested, "model.precision": ("int8", "fp32")}
    return resolved, choice
