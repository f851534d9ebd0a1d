"""Running an int8 variant: an ONNX Runtime session in place of a SentenceTransformer's transformer.

Below `vectune.embed.int8` (which finds or builds the variant) so that the build's own quality
check can run a variant without importing what builds it.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from vectune.errors import ModelError

log = logging.getLogger("vectune.embed.int8")

#: ONNX Runtime session option: the int8 weights become uint8 as the graph loads and the exact
#: U8U8 kernels run (x86 only). Set where uint8 x int8 products saturate (`exact_u8s8` false)
X64_QUANT_PRECISION = "session.x64quantprecision"
#: tokens (rows x longest row) per session call: a padded batch is split into runs of at most
#: this many, each cut to its own longest text. Measured (AVX-512 AMX, process CPU seconds, 1
#: and 2 threads alike): 32 SciFact abstracts 0.82 s at 128-512 tokens a call, 1.06 at 1,024,
#: 1.3-1.5 as one padded batch; 256 queries of ~20 tokens 0.52 s at 128-256, 0.57 at 512, 0.73
#: at 1,024, 0.9-1.2 as batches of 64 (smaller calls stay in cache; far smaller ones pay the
#: call's overhead: recipe 3's one text per call)
TOKEN_BUDGET = 256


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


def _network_class():
    import torch

    class OnnxNetwork(torch.nn.Module):
        """Stands in for the transformer module's network: the same inputs, `last_hidden_state`
        out. A module (the slot it fills is a registered child) with one empty parameter, so
        the model still reports its device."""

        def __init__(self, graph: Path, config, threads: int | None = None):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)
            self.runner = Session(graph, threads)
            self.config = config

        def forward(self, **features):
            return self.runner(features)

    return OnnxNetwork


class Session:
    """An ONNX Runtime session fed from tokenizer tensors, in runs of at most `TOKEN_BUDGET` tokens."""

    def __init__(self, graph: Path, threads: int | None = None, token_budget: int = TOKEN_BUDGET):
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
        self.token_budget = token_budget

    def __call__(self, features: dict):
        import numpy as np
        import torch

        feed = {name: np.asarray(features[name].cpu().numpy(), dtype=np.int64) for name in self.inputs
                if name in features}
        if "token_type_ids" in self.inputs and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        mask = feed["attention_mask"]
        lengths = mask.sum(axis=1).astype(int)
        # Static ranges: a row's output does not depend on the rows run with it, so the batch
        # is cut into runs of similar lengths, each only as wide as its longest row: less
        # padding, and runs small enough to stay in cache (measured faster than one call).
        # A tokenizer that pads on the left cannot be cut so: its batch runs as it came.
        right_padded = all(mask[i, :n].all() for i, n in enumerate(lengths))
        plan = runs(lengths, self.token_budget) if right_padded else [(list(range(len(lengths))), mask.shape[1])]
        hidden = None
        for rows, width in plan:
            out = self.session.run(None, {k: v[rows, :width] for k, v in feed.items()})[0]
            if hidden is None:
                hidden = np.zeros((len(lengths), feed["input_ids"].shape[1], out.shape[-1]), dtype=np.float32)
            hidden[rows, :width] = out
        return {"last_hidden_state": torch.from_numpy(hidden)}


def runs(lengths, budget: int) -> list[tuple[list[int], int]]:
    """Rows grouped by length (longest first) into runs of at most `budget` tokens counted with
    padding (rows x the run's longest), each with its width; a row longer than the budget
    runs alone."""
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    out: list[tuple[list[int], int]] = []
    rows: list[int] = []
    width = 0
    for i in order:
        length = max(int(lengths[i]), 1)
        if rows and (len(rows) + 1) * width > budget:
            out.append((rows, width))
            rows, width = [], 0
        rows.append(i)
        width = max(width, length)
    if rows:
        out.append((rows, width))
    return out


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
