"""Building a model's int8 variant (recipe 4): export, fuse, smooth, calibrate, quantize.

Each step is ONNX Runtime's or torch's own tool, except the smoothing, a graph edit the tools
lack here (measured reasons in `vectune.embed.int8`'s docstring):

1. `torch.onnx.export` of the transformer (keyword inputs: transformers 5 refuses positional
   ones), eager attention;
2. ONNX Runtime's transformer optimizer, for BERT-like models, with attention fused as
   `MultiHeadAttention` (the query, key and value projections stay MatMuls, so they can be
   quantized; the `Attention` op would keep them in fp32 inside it), skip-layer-norm and
   bias-GELU fused; then its symbolic shape inference, so the quantizer sees the types of the
   fused ops' outputs (without it, it quantizes no activation at all);
3. smoothing (SmoothQuant, Xiao et al. 2023, by hand: ONNX Runtime's own needs Intel Neural
   Compressor): for each activation that feeds MatMuls, a per-channel factor `s` moves range
   from the activation to the weights (`x / s`, `W * s`), computed from the calibration texts;
4. `quantize_static` (QDQ, uint8 activations per tensor with ranges calibrated by MinMax on
   the same texts, int8 weights per output channel, MatMul outputs left in float so ONNX
   Runtime runs `MatMulIntegerToFloat`).

The smoothing Mul also keeps the residual stream in float: without it the quantizer hands
every reader of a quantized activation its quantize-dequantize copy, the skip-layer-norms'
residual inputs included (measured without smoothing, attention fused as `Attention`, the
down-projections in fp32: cosine to fp32 on 64 SciFact abstracts 0.9971 with the residual
rounded, 0.9986 with it restored by hand); with the Mul, only the MatMuls read the
quantized copy and the rest read the activation itself.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
import warnings
from pathlib import Path

from vectune.errors import ModelError

#: config.json model types ONNX Runtime's transformer optimizer fuses as BERT
BERT_LIKE = {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "mpnet", "deberta-v2"}
#: SmoothQuant's migration strength: 0.8 measured best of 0.5-1.0 (all-MiniLM-L6-v2, cosine to
#: fp32 on 64 SciFact abstracts: 0.5 0.985, 0.7 0.9978, 0.8 0.9981, 0.9 0.9976, 1.0 0.9966;
#: none 0.9948)
ALPHA = 0.8
#: calibration texts are cut to this many tokens (the model's own limit when smaller)
CALIBRATION_TOKENS = 256


@contextlib.contextmanager
def quiet():
    """ONNX Runtime's tools log advice at WARNING through the root logger; keep it out of stage logs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def transformer_folder(model_path: str) -> Path:
    """The folder of a sentence-transformers model's Transformer module (the model's own otherwise)."""
    import json

    root = Path(model_path)
    modules = root / "modules.json"
    if modules.exists():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            if str(module.get("type", "")).endswith("Transformer"):
                return root / str(module.get("path", ""))
    return root


def build(model_path: str, out: Path, texts: list[str], tmp: Path) -> dict:
    """Write the int8 graph of `model_path` to `out`, calibrated on `texts`; `tmp` holds the
    intermediate graphs. Returns what was built and how long each step took."""
    import onnx
    from transformers import AutoConfig, AutoTokenizer

    seconds: dict[str, float] = {}
    started = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal started
        now = time.perf_counter()
        seconds[step] = round(now - started, 1)
        started = now

    source = transformer_folder(model_path)
    config = AutoConfig.from_pretrained(source, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    plain, names = _export(source, tokenizer, tmp / "model.onnx")
    lap("export")
    fused = config.model_type in BERT_LIKE
    model = _fuse(plain, config) if fused else onnx.load(str(plain))
    lap("fuse")
    feeds = _feeds(tokenizer, texts, names, min(CALIBRATION_TOKENS, tokenizer.model_max_length or CALIBRATION_TOKENS))
    groups = _smooth(model, feeds)
    smoothed = tmp / "model_smoothed.onnx"
    onnx.save(_with_shapes(model), str(smoothed))  # the quantizer needs the fused ops' output types
    lap("smooth")
    _quantize(smoothed, tmp / "model_qdq.onnx", feeds)
    lap("calibrate_quantize")
    os.replace(tmp / "model_qdq.onnx", out)
    quantized = onnx.load(str(out), load_external_data=False)
    ops = collections.Counter(n.op_type for n in quantized.graph.node)
    return {"inputs": names, "model_type": config.model_type, "fused": fused,
            "quantized_matmuls": ops.get("MatMul", 0) - _float_matmuls(quantized),
            "float_matmuls": _float_matmuls(quantized), "smoothed_activations": groups,
            "calibration_texts": len(texts), "step_seconds": seconds}


def _export(source: Path, tokenizer, path: Path) -> tuple[Path, list[str]]:
    import torch
    from transformers import AutoModel

    try:
        network = AutoModel.from_pretrained(source, attn_implementation="eager", local_files_only=True).eval()
    except Exception as exc:  # noqa: BLE001 - any load error, one message
        raise ModelError(f"model.precision int8: cannot load {source} for export: {exc}") from None
    sample = tokenizer(["an example sentence", "a second, longer example sentence"], padding=True,
                       return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]

    class Hidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *tensors):
            return self.inner(**dict(zip(names, tensors))).last_hidden_state

    axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]}
    with quiet(), torch.no_grad():
        try:
            torch.onnx.export(Hidden(network), tuple(sample[n] for n in names), str(path), input_names=names,
                              output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17,
                              dynamo=False)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"model.precision int8: ONNX export of {source} failed: {exc}") from None
    return path, names


def _fuse(plain: Path, config):
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.use_multi_head_attention = True  # Q, K, V stay MatMuls: quantizable
    with quiet():
        optimized = optimize_model(str(plain), model_type="bert", num_heads=getattr(config, "num_attention_heads", 0),
                                   hidden_size=getattr(config, "hidden_size", 0), optimization_options=options)
    return optimized.model


def _with_shapes(model):
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    with quiet():
        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)


def _feeds(tokenizer, texts: list[str], names: list[str], tokens: int) -> list[dict]:
    """One feed per text, unpadded (padding would put positions no text has into the ranges)."""
    import numpy as np

    feeds = []
    for text in texts:
        encoded = tokenizer(text, truncation=True, max_length=tokens, return_tensors="np")
        feeds.append({n: np.asarray(encoded[n], dtype=np.int64) for n in names})
    return feeds


def _matmul_groups(model) -> dict[str, list]:
    """Activation tensor -> the MatMuls that multiply it by a constant weight."""
    weights = {t.name for t in model.graph.initializer}
    groups: dict[str, list] = collections.defaultdict(list)
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in weights:
            groups[node.input[0]].append(node)
    return groups


def _smooth(model, feeds: list[dict]) -> int:
    """SmoothQuant in place: for each activation x feeding constant-weight MatMuls, a Mul by
    1/s before them (their only input: the activation's other readers keep x) and the weights'
    rows scaled by s, where s_j = max|x_j|^ALPHA / max|W_j|^(1-ALPHA) over the texts. The
    float function is unchanged (x/s times s*W). Returns the number of activations smoothed."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    groups = _matmul_groups(model)
    if not groups:
        return 0
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    names = list(groups)
    probe.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the tensors as named
    with quiet():
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    peak = {n: None for n in names}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed)):
            top = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            peak[name] = top if peak[name] is None else np.maximum(peak[name], top)
    weights = {t.name: t for t in model.graph.initializer}
    nodes = list(model.graph.node)
    for name, matmuls in groups.items():
        arrays = [numpy_helper.to_array(weights[m.input[1]]) for m in matmuls]
        w_peak = np.max([np.abs(w).max(axis=1) for w in arrays], axis=0)
        scale = (np.maximum(peak[name], 1e-5) ** ALPHA / np.maximum(w_peak, 1e-5) ** (1 - ALPHA)).astype(np.float32)
        for matmul, w in zip(matmuls, arrays):
            weights[matmul.input[1]].CopyFrom(numpy_helper.from_array((w * scale[:, None]).astype(np.float32),
                                                                      matmul.input[1]))
        inverse = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{name}_smooth_inverse")
        model.graph.initializer.append(inverse)
        mul = helper.make_node("Mul", [name, inverse.name], [f"{name}_smoothed"], name=f"{name}_smooth")
        for matmul in matmuls:
            matmul.input[0] = mul.output[0]
        nodes.insert(min(nodes.index(m) for m in matmuls), mul)  # before its first reader: still sorted
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return len(groups)


def _quantize(source: Path, target: Path, feeds: list[dict]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(feeds)

        def get_next(self):
            return next(self.rows, None)

    with quiet():
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul"],
                        extra_options={"MatMulConstBOnly": True, "OpTypesToExcludeOutputQuantization": ["MatMul"]})


def _float_matmuls(model) -> int:
    """MatMuls whose weight is a plain float initializer (not behind a DequantizeLinear)."""
    weights = {t.name for t in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in weights)


def remove_tree(folder: Path) -> None:
    for part in folder.iterdir():
        part.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        os.rmdir(folder)
