"""`model.precision: int8`: the model's transformer as an int8 ONNX Runtime graph on CPUs.

Built locally from the model folder, once per model (no network): the transformer is
exported to ONNX with eager attention, fused by ONNX Runtime's transformer optimizer
(attention, GELU, skip-layer-norm) where it knows the architecture, and its MatMul weights
quantized to int8 per output channel (dynamic quantization: activations are quantized on
the fly), except the feed-forward down-projections: their input is the GELU output, whose
outliers one activation scale per tensor serves badly. Measured on 200 SciFact abstracts with
the tuned SciFact model: every MatMul quantized, cosine to fp32 0.9957 (mean); the
down-projections kept in fp32, 0.9989, for ~4% of the speed; per-tensor quantization of every
op, ~0.93.

The graph is written beside the model (`<model>/onnx/model_qint8.onnx` plus
`vectune_int8.json`, which records what it was built from), so a tuned model travels with
its int8 variant and a service that loads it gets the same vectors. A packaged model (inside
site-packages) or a folder that is not writable gets it in the runs storage's cache
(`<runs>/_cache/int8/<fingerprint>/`) instead. Exports are serialised by a file lock, so encoder actors started together build it
once. The folder `onnx/` is left out of the model's fingerprint: it is derived from it.

At encode time the sentence-transformers model is loaded as usual (tokenizer, pooling,
dense and normalisation modules run unchanged) and only its transformer module's network is
swapped for the ONNX Runtime session: the same tokenisation, length sorting, batching and
pooling as fp32.

CPUs without VNNI (issue 28): the graph multiplies uint8 activations by int8 weights. With
VNNI (VPDPBUSD) or AMX, ONNX Runtime's kernels sum the products in int32: exact. Without it
(AVX2, AVX-512 without VNNI) they use VPMADDUBSW, which adds each pair of products into an
int16 with saturation (2 x 255 x 127 > 32767), and the vectors drift: cosine to fp32 0.9960
(min 0.9925) on an AVX2 EPYC against 0.9989 on AVX-512 VNNI. On those CPUs the session is
opened with ONNX Runtime's `session.x64quantprecision`, which turns the int8 weights into
uint8 as the graph loads, so its exact U8U8 kernels run: the same graph file and, up to
rounding, the same vectors as with VNNI. Measured on 16 SciFact abstracts at 64 tokens
(all-MiniLM-L6-v2, cosine to fp32 mean / min), natively on AVX-512 VNNI with AMX and under
`qemu-x86_64 -cpu Haswell` (AVX2 without VNNI: ONNX Runtime picks its kernels from CPUID,
which QEMU emulates; /proc/cpuinfo there is the host's):

| graph, session | AVX-512 VNNI (native) | Haswell AVX2 (emulated) |
|---|---|---|
| int8 weights (recipe 2), plain | 0.99841 / 0.99751 | 0.99656 / 0.99334: saturated |
| int8 weights, `session.x64quantprecision` | 0.99841 / 0.99751 (same vectors) | 0.99842 / 0.99751 |
| 7-bit int8 weights (`reduce_range`) | 0.99809 / 0.99726 | 0.99809 / 0.99723 |
| uint8 weights (U8U8 graph) | 0.99842 / 0.99746 | 0.99842 / 0.99739 |

With the option, 14 of the 16 AVX2 vectors are within 5e-8 of the VNNI ones, 2 at cosine
0.99986 and 0.99995 (an activation rounded the other way); 7-bit weights (ONNX Runtime's
advice for static quantization) avoid the saturation too but are further from fp32 (48
abstracts at 256 tokens, native: 0.99848 / 0.99715 against 0.99886 / 0.99811). The option is
not set where VNNI is: ONNX Runtime converts there too (on any x86 CPU whose U8U8 and U8S8
kernels differ, VNNI ones included) and its U8U8 kernels encode 48 abstracts in 1.19 s
against 0.94 s (2 threads, AVX-512 VNNI with AMX), for the same vectors. Its cost on a real
AVX2 CPU is not measured (emulation says nothing about speed). Since every CPU kind now
computes the same vectors, the identity is the same everywhere (a mixed cluster shares its
caches); the recipe went from 2 to 3 so that the saturated int8 vectors AVX2 machines cached
or indexed under recipe 2 are never reused (one rebuild of the graph and of int8 caches).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import time
from pathlib import Path

from vectune.errors import ModelError

log = logging.getLogger(__name__)

FILE = "model_qint8.onnx"
META = "vectune_int8.json"
#: bump when the export or quantization recipe changes: older graphs are rebuilt, and the
#: vectors' identity (cache keys, collection stamps, score digests) changes with it.
#: 3: exact int8 products on every CPU (`X64_QUANT_PRECISION` where there is no VNNI); recipe
#: 2's vectors were saturated on such CPUs, so nothing stored under it is reused anywhere
RECIPE = 3
#: config.json model types ONNX Runtime's transformer optimizer fuses as BERT
_BERT_LIKE = {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "mpnet", "deberta-v2"}
#: seconds an actor waits for another process's export of the same model
LOCK_TIMEOUT = 900.0
#: ONNX Runtime session option: the int8 weights become uint8 as the graph loads and the exact
#: U8U8 kernels run (x86 only). Set where uint8 x int8 products saturate (`exact_u8s8` false)
X64_QUANT_PRECISION = "session.x64quantprecision"


def exact_u8s8(cpu=None) -> bool:
    """Whether `cpu` (default: this machine's, `vectune.precision.cpu_info`) multiplies uint8
    by int8 without saturating, so the graph runs as built: x86 with VNNI (avx512_vnni,
    avx_vnni) or AMX, and ARM (ONNX Runtime's ARM kernels accumulate in 32 bits, by their
    source; not measured here)."""
    if cpu is None:
        from vectune.precision import cpu_info

        cpu = cpu_info()
    return cpu.vnni or cpu.kind.startswith("ARM")


@functools.cache
def _say_once(message: str) -> None:
    log.info(message)


def require_runtime() -> None:
    """ModelError naming the extra when ONNX Runtime is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ModelError("model.precision int8 runs on ONNX Runtime, which is in vectune's `int8` extra: "
                         "pip install 'vectune[int8]' (or set model.precision to fp32 or bf16)") from None


def _transformer_folder(model_path: str) -> Path:
    root = Path(model_path)
    modules = root / "modules.json"
    if modules.exists():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            if str(module.get("type", "")).endswith("Transformer"):
                return root / str(module.get("path", ""))
    return root


def _versions() -> dict:
    import onnxruntime
    import torch
    import transformers

    return {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__.split("+")[0],
            "transformers": transformers.__version__}


def _wanted(fingerprint: str) -> dict:
    return {"recipe": RECIPE, "fingerprint": fingerprint, **_versions()}


def _current(folder: Path, want: dict) -> bool:
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (folder / FILE).exists() and all(meta.get(k) == v for k, v in want.items() if k != "onnxruntime")


def _installed(model_path: str) -> bool:
    """Whether the folder is inside a Python installation (a packaged model such as the demo's):
    its int8 graph goes to the runs cache, not into site-packages."""
    import sysconfig

    roots = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    return any(Path(model_path).resolve().is_relative_to(root) for root in roots)


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def int8_graph(model_path: str, fingerprint: str, cache_root: str | None = None) -> Path:
    """The int8 ONNX graph of a model folder, built now if missing or stale. Returns its path."""
    require_runtime()
    if not Path(model_path).is_dir():
        raise ModelError(f"model.precision int8 needs a local model folder; {model_path!r} is not one")
    want = _wanted(fingerprint)
    cached = [Path(cache_root) / fingerprint] if cache_root else []
    beside = [] if _installed(model_path) and cached else [Path(model_path) / "onnx"]
    places = beside + cached
    for folder in places:
        if _current(folder, want):
            return folder / FILE
    folder = next((f for f in places if _writable(f)), None)
    if folder is None:
        raise ModelError(f"model.precision int8: cannot write the int8 graph beside {model_path} "
                         "(read-only) and no runs cache is configured")
    with _lock(folder / ".export.lock"):
        if not _current(folder, want):  # another process may have built it while we waited
            _build(model_path, folder, want)
    return folder / FILE


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
                    raise ModelError(f"{path}: another process has been exporting the int8 model for over "
                                     f"{LOCK_TIMEOUT:g} s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build(model_path: str, folder: Path, want: dict) -> None:
    import warnings

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    started = time.perf_counter()
    source = _transformer_folder(model_path)
    config = AutoConfig.from_pretrained(source, local_files_only=True)
    try:
        network = AutoModel.from_pretrained(source, attn_implementation="eager", local_files_only=True).eval()
    except Exception as exc:  # noqa: BLE001 - any load error, one message
        raise ModelError(f"model.precision int8: cannot load {source} for export: {exc}") from None
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    sample = tokenizer(["an example sentence", "a second, longer example sentence"], padding=True,
                       return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]

    class Hidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *tensors):
            return self.inner(**dict(zip(names, tensors))).last_hidden_state

    tmp = folder / f".build-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    plain, fused, quantized = tmp / "model.onnx", tmp / "model_fused.onnx", tmp / FILE
    axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(Hidden(network), tuple(sample[n] for n in names), str(plain), input_names=names,
                              output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17,
                              dynamo=False)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"model.precision int8: ONNX export of {source} failed: {exc}") from None
    source_graph = plain
    if config.model_type in _BERT_LIKE:
        from onnxruntime.transformers.optimizer import optimize_model

        heads, hidden = getattr(config, "num_attention_heads", 0), getattr(config, "hidden_size", 0)
        with _quiet():
            optimized = optimize_model(str(plain), model_type="bert", num_heads=heads, hidden_size=hidden)
        optimized.save_model_to_file(str(fused))
        source_graph = fused
    kept = _down_projections(source_graph, config)
    with _quiet():
        quantize_dynamic(str(source_graph), str(quantized), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=kept,
                         extra_options={"DefaultTensorType": 1})
    os.replace(quantized, folder / FILE)
    meta = {**want, "inputs": names, "fused": source_graph == fused, "model_type": config.model_type,
            "fp32_matmuls": len(kept),
            "seconds": round(time.perf_counter() - started, 1)}
    (folder / f".{META}.tmp").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    os.replace(folder / f".{META}.tmp", folder / META)
    for part in tmp.iterdir():
        part.unlink(missing_ok=True)
    tmp.rmdir()
    log.info("int8 ONNX graph of %s built in %.1f s: %s", model_path, meta["seconds"], folder / FILE)


def _down_projections(graph: Path, config) -> list[str]:
    """The MatMul nodes whose weight maps the feed-forward width back to the hidden size
    (intermediate_size x hidden_size): the layers left in fp32. Found by the weights' shape,
    so it holds for any BERT-like architecture whatever its node names."""
    import onnx

    inner, hidden = getattr(config, "intermediate_size", None), getattr(config, "hidden_size", None)
    if not inner or not hidden:
        return []
    model = onnx.load(str(graph), load_external_data=False)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and len(n.input) > 1 and shapes.get(n.input[1]) == [inner, hidden]]


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's tools log advice at WARNING through the root logger; keep it out of stage logs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _network_class():
    import torch

    class OnnxNetwork(torch.nn.Module):
        """Stands in for the transformer module's network: the same inputs, `last_hidden_state`
        out. A module (the slot it fills is a registered child) with one empty parameter, so
        the model still reports its device."""

        def __init__(self, graph: Path, config, threads: int | None = None):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)
            self.runner = _Session(graph, threads)
            self.config = config

        def forward(self, **features):
            return self.runner(features)

    return OnnxNetwork


class _Session:
    """An ONNX Runtime session fed from tokenizer tensors."""

    def __init__(self, graph: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not exact_u8s8():  # exact int8 products without VNNI: uint8 weights, U8U8 kernels
            options.add_session_config_entry(X64_QUANT_PRECISION, "1")
            _say_once("int8 on a CPU without VNNI: ONNX Runtime runs its exact uint8 x uint8 kernels "
                      f"({X64_QUANT_PRECISION}); the same vectors as on CPUs with VNNI")
        self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.graph = graph

    def __call__(self, features: dict):
        import numpy as np
        import torch

        feed = {name: np.asarray(features[name].cpu().numpy(), dtype=np.int64) for name in self.inputs
                if name in features}
        if "token_type_ids" in self.inputs and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        mask = feed["attention_mask"]
        hidden = None
        # One text at a time, cut to its own length: dynamic quantization scales activations
        # per tensor, so in a batch a text's vector would depend on its neighbours (cosine
        # ~0.993 between two batchings); alone, it depends on the text only, which the
        # embedding cache, the re-index verification and search rely on. No padding is run.
        for row in range(mask.shape[0]):
            length = int(mask[row].sum()) or 1
            out = self.session.run(None, {k: v[row:row + 1, :length] for k, v in feed.items()})[0]
            if hidden is None:
                hidden = np.zeros((mask.shape[0], mask.shape[1], out.shape[-1]), dtype=np.float32)
            hidden[row, :length] = out[0]
        return {"last_hidden_state": torch.from_numpy(hidden)}


def attach(model, graph: Path, threads: int | None = None):
    """Swap a loaded SentenceTransformer's transformer network for the int8 ONNX session."""
    first = model[0]
    network = getattr(first, "model", None) or getattr(first, "auto_model", None)
    if network is None or not hasattr(network, "config"):
        raise ModelError("model.precision int8 supports models whose first module is a Transformer")
    onnx_network = _network_class()(graph, network.config, threads)
    if hasattr(first, "model"):
        first.model = onnx_network
    else:
        first.auto_model = onnx_network
    if getattr(first, "model_forward_params", None) is not None:
        first.model_forward_params = set(onnx_network.runner.inputs)
    return model
