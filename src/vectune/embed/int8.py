"""`model.precision: int8`: the model's transformer as a static int8 ONNX Runtime graph on CPUs.

(Figures and the reasons for the recipe: "Measured", at the end of this docstring.)

**What the variant is** (recipe 4, built by `vectune.embed._int8_build`): the transformer
exported to ONNX, fused by ONNX Runtime's optimizer with attention as `MultiHeadAttention`,
smoothed (SmoothQuant, alpha 0.8), and quantized *statically* in QDQ format: every MatMul with
a weight runs as uint8 activations x int8 weights (per output channel), the activations'
ranges calibrated once, on a fixed sample of texts shipped with vectune
(`vectune.embed._calibration`, its hash recorded). Fixed ranges make a text's vector
independent of the texts batched with it, so the graph runs in length-sorted batches like
fp32 (each cut to its own longest text and to at most `TOKEN_BUDGET` tokens).

**Where it lives**, once per model and machine: beside a writable model
(`<model>/onnx/int8-<key>/`), so a tuned model travels with its variant; for a packaged
model (inside site-packages) or a read-only folder, in the user's cache,
`$XDG_CACHE_HOME/vectune/int8/<fingerprint>/<key>/` (default `~/.cache/...`). `<key>` hashes
the variant's identity (`identity()`): the recipe, the format, the calibration sample's hash
and the versions of torch, transformers, onnx and onnxruntime it is built with. That
identity, as `r4-<key>`, is part of the precision's identity (`int8-r4-<key>`: embedding
cache keys, score digests, collection stamps), so vectors from another variant are never
mixed with these. `vectune model export MODEL --precision int8` builds it ahead of time;
otherwise the first encoder that needs it does (file lock: actors started together build it
once). The folder `onnx/` is left out of the model's fingerprint: it is derived from it.

**Quality is measured when it is built**: its vectors against fp32 on a fixed sample
(cosine, mean and min, in `vectune_int8.json`), and nDCG@10 of both on a small packaged
retrieval sample (`vectune.embed._int8_quality`); the decisive check, nDCG@10 on a run's
validation queries against `model.int8_tolerance`, is `vectune.embed.int8_check.check_int8`.
The session that runs a variant lives in `vectune.embed._int8_session` (re-exported here).

**CPUs without VNNI**: uint8 x int8 products saturate in ONNX Runtime's VPMADDUBSW kernels
(AVX2, AVX-512 without VNNI; issue 28). There the session is opened with
`session.x64quantprecision`, which turns the int8 weights into uint8 as the graph loads so
the exact U8U8 kernels run: the same graph and, up to rounding, the same vectors as with
VNNI, hence one identity on every CPU kind. Measured under `qemu-x86_64 -cpu Haswell` (AVX2, no
VNNI; ONNX Runtime picks its kernels from CPUID), one abstract at 16 tokens: run as built,
cosine 0.9941 to fp32 (saturated); with the option, 0.9983, the VNNI output's (cosine 1.0 to
it). Its speed on a real AVX2 CPU is not measured here.

At encode time the sentence-transformers model is loaded as usual (tokenizer, pooling,
normalisation unchanged) and only its transformer module's network is swapped for the ONNX
Runtime session.

**Measured** (2026-12-05, 2 cores of an AVX-512 AMX Xeon with VNNI shared with three other
jobs, so speeds are CPU seconds or ratios measured side by side; `benchmarks/encode.py
--int8-recipes` repeats the comparison). Quality on the SciFact test queries (300) over a
1,500-document slice (every labelled document, then the corpus in file order); cosine to
fp32 over its documents and queries:

| recipe | base nDCG@10 - fp32 | tuned nDCG@10 - fp32 | cosine mean / min (base) |
|---|---|---|---|
| 3: dynamic, `Attention` fused (Q, K, V in fp32), down-projections fp32, one text a call | -0.0053 | -0.0072 | 0.9988 / 0.9967 |
| static, every MatMul, not smoothed (64 abstracts) | | | 0.9948 |
| 4 without the down-projections (fp32) | -0.0004 | -0.0004 | 0.9993 / 0.9971 |
| **4: static, smoothed, every MatMul** | **+0.0004** | **-0.0024** | 0.9981 / 0.9910 |

(fp32: base 0.7584, tuned 0.8173 on this slice.) Dynamic vectors sit closer to fp32 on
average but rank worse: static ranges are fixed per tensor, dynamic ones move with each
text, and that reorders near ties. Smoothing's strength, alpha, was swept on 64 abstracts
(cosine, all MatMuls): none 0.9948, 0.5 0.9851, 0.7 0.9978, 0.8 0.9981, 0.9 0.9976, 1.0
0.9966; quantizing one group alone (alpha 0.8) shows where the rest of the error is: Q, K,
V 0.9998, output 0.9999, up 0.9996, down 0.9986.

Speed, ONNX Runtime alone, 1 thread, process CPU seconds, one run (2 threads rank them the
same): 32 abstracts (~240 tokens) / 256 queries (~20 tokens): fp32 graph 1.96 / 1.97 in padded
batches of 64, 1.44-1.58 / 1.2 at its best call size; recipe 4 without the down-projections
1.10 / 0.78; **recipe 4 0.82 / 0.51** (2.4x / 3.9x the fp32 graph in batches). In another
run, recipe 3 (one text a call) took 1.34-1.42 s on the abstracts where the fp32 graph took
2.35 in batches of 32 (1.7x). Recipe 4 is faster and ranks closer to fp32 than recipe 3 on
both models, so dynamic quantization is not kept. End-to-end figures (the evaluate stage,
a re-index of short texts) are in README.md, "Encoding precision".
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from vectune.embed import _int8_build
from vectune.embed._int8_session import TOKEN_BUDGET, X64_QUANT_PRECISION, Session, attach, exact_u8s8, runs
from vectune.errors import ModelError

__all__ = ["TOKEN_BUDGET", "X64_QUANT_PRECISION", "Session", "Variant", "attach", "exact_u8s8", "identity", "runs",
           "tag", "variant"]

log = logging.getLogger(__name__)

FILE = "model.onnx"
META = "vectune_int8.json"
#: bump when the build recipe changes: older variants are rebuilt, and the vectors' identity
#: (cache keys, collection stamps, score digests) changes with it. 3: dynamic, one text at a
#: time; 4: static, smoothed, calibrated, batched
RECIPE = 4
#: the graph's format: QDQ, activations uint8 per tensor (static ranges), weights int8 per
#: output channel, SmoothQuant (its alpha) before every MatMul with a weight
FORMAT = f"qdq-u8s8-perchannel-sq{_int8_build.ALPHA}"
#: libraries whose versions are part of the identity (the export, the optimizer, the quantizer, the kernels)
LIBRARIES = ("torch", "transformers", "onnx", "onnxruntime")
#: seconds an actor waits for another process's build of the same variant
LOCK_TIMEOUT = 900.0


def require_runtime(build: bool = False) -> None:
    """ModelError naming the extra when ONNX Runtime (and, to `build` a variant, onnx) is
    missing. Running a variant needs ONNX Runtime only: `import onnx` alone took 8 s of a
    9.4 s int8 model load on a loaded 2-core machine, in every encoder actor."""
    try:
        import onnxruntime  # noqa: F401

        if build:
            import onnx  # noqa: F401
    except ImportError:
        raise ModelError("model.precision int8 runs on ONNX Runtime, which is in vectune's `int8` extra: "
                         "pip install 'vectune[int8]' (or set model.precision to fp32 or bf16)") from None


# -- identity ---------------------------------------------------------------------------------
@functools.cache
def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name).split("+")[0]  # torch's local build tag (+cpu, +cu124) computes the same graph
    except PackageNotFoundError:
        return None


def identity() -> dict:
    """What decides the variant's vectors, besides the model: the recipe, the format, the
    calibration sample and the library versions it is built with (read from the installed
    packages' metadata: nothing is imported)."""
    from vectune.embed._calibration import CALIBRATION_HASH

    return {"recipe": RECIPE, "format": FORMAT, "calibration": CALIBRATION_HASH,
            "versions": {name: _version(name) for name in LIBRARIES}}


def identity_key(ident: dict | None = None) -> str:
    """A short hash of `identity()`: the variant's folder name and part of the precision's identity."""
    blob = json.dumps(ident or identity(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def tag(ident: dict | None = None) -> str:
    """`r<recipe>-<key>`: what a collection stamps as `int8_recipe`."""
    ident = ident or identity()
    return f"r{ident['recipe']}-{identity_key(ident)}"


# -- where the variant lives ----------------------------------------------------------------
def user_cache() -> Path:
    """`$XDG_CACHE_HOME/vectune/int8` (an absolute XDG_CACHE_HOME only, as the XDG spec says),
    else `~/.cache/vectune/int8`."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "vectune" / "int8"


def _installed(model_path: str) -> bool:
    """Whether the folder is inside a Python installation (a packaged model such as the demo's):
    its variant goes to the user's cache, never into site-packages."""
    import sysconfig

    roots = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    return any(Path(model_path).resolve().is_relative_to(root) for root in roots)


def places(model_path: str, fingerprint: str, key: str, cache_root: str | None = None) -> list[Path]:
    """Where the variant of `key` is looked for, in order, and built (the first writable):
    beside the model unless it is packaged, then the cache (`cache_root`, else `user_cache()`)."""
    cached = Path(cache_root or user_cache()) / fingerprint / key
    if _installed(model_path):
        return [cached]
    return [Path(model_path) / "onnx" / f"int8-{key}", cached]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _current(folder: Path, fingerprint: str, ident: dict) -> bool:
    meta = read_meta(folder)
    return bool(meta) and (folder / FILE).exists() and meta.get("fingerprint") == fingerprint and \
        meta.get("identity") == ident


@dataclasses.dataclass(frozen=True)
class Variant:
    """A model's int8 variant on disk."""

    folder: Path
    meta: dict
    built: bool  # by this call (False: found)

    @property
    def graph(self) -> Path:
        return self.folder / FILE


def variant(model_path: str, fingerprint: str, cache_root: str | None = None, *, want: str | None = None) -> Variant:
    """The int8 variant of a model folder, built now if there is none for this installation.

    `want`: a stamped tag (`r4-<key>`) to find instead of this installation's; it is never
    built (other library versions built it), so its absence is a ModelError.
    """
    require_runtime()
    if not Path(model_path).is_dir():
        raise ModelError(f"model.precision int8 needs a local model folder; {model_path!r} is not one")
    ident = identity()
    mine = tag(ident)
    if want and want != mine:
        key = want.partition("-")[2]
        for folder in places(model_path, fingerprint, key, cache_root):
            meta = read_meta(folder)
            if meta and (folder / FILE).exists() and meta.get("fingerprint") == fingerprint:
                return Variant(folder, meta, built=False)
        raise ModelError(f"the int8 variant {want} of {model_path} (what the collection was embedded with) is not on "
                         f"this machine, and these library versions build {mine}: re-index the collection, or run "
                         "with the versions that built it")
    candidates = places(model_path, fingerprint, identity_key(ident), cache_root)
    for folder in candidates:
        if _current(folder, fingerprint, ident):
            return Variant(folder, read_meta(folder) or {}, built=False)
    folder = next((f for f in candidates if _writable(f)), None)
    if folder is None:
        raise ModelError(f"model.precision int8: cannot write the int8 variant beside {model_path} (read-only) nor "
                         f"under {candidates[-1].parent.parent}: set XDG_CACHE_HOME to a writable folder, or build it "
                         "where one is writable with `vectune model export MODEL --precision int8`")
    with _lock(folder / ".build.lock"):
        built = not _current(folder, fingerprint, ident)  # another process may have built it while we waited
        if built:
            _build(model_path, fingerprint, folder, ident)
    return Variant(folder, read_meta(folder) or {}, built=built)


@contextlib.contextmanager
def _lock(path: Path):
    deadline = time.monotonic() + LOCK_TIMEOUT
    with open(path, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ModelError(f"{path}: another process has been building the int8 variant for over "
                                     f"{LOCK_TIMEOUT:g} s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build(model_path: str, fingerprint: str, folder: Path, ident: dict) -> None:
    import platform

    from vectune.embed import _int8_quality
    from vectune.embed._calibration import calibration_texts
    from vectune.precision import cpu_info

    require_runtime(build=True)
    started = time.perf_counter()
    tmp = folder / f".build-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        facts = _int8_build.build(model_path, tmp / FILE, calibration_texts(), tmp)
        os.replace(tmp / FILE, folder / FILE)
    finally:
        _int8_build.remove_tree(tmp)
    checked = time.perf_counter()
    quality = _int8_quality.build_checks(model_path, folder / FILE, tag(ident))
    cpu = cpu_info()
    meta = {"identity": ident, "tag": tag(ident), "fingerprint": fingerprint, "model": str(model_path),
            **facts, "check_seconds": round(time.perf_counter() - checked, 1),
            "seconds": round(time.perf_counter() - started, 1),
            "built_on": {"cpu": cpu.kind, "vnni": cpu.vnni, "machine": platform.machine()}, **quality}
    _write_meta(folder, meta)
    log.info("int8 variant of %s built in %.1f s: %s (cosine to fp32 %.4f mean)", model_path, meta["seconds"],
             folder / FILE, meta["quality"]["cosine_mean"])


def _write_meta(folder: Path, meta: dict) -> None:
    tmp = folder / f".{META}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, folder / META)


def record_check(folder: Path, verdict: dict) -> None:
    """Append a quality check's verdict to the variant's metadata (the last 20 are kept)."""
    with _lock(folder / ".build.lock"):
        meta = read_meta(folder) or {}
        meta["checks"] = [*meta.get("checks", []), verdict][-20:]
        _write_meta(folder, meta)
