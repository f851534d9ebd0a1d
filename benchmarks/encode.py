"""Encoding throughput: the evaluate stage's Ray Data encoder against plain `model.encode`.

On the same SciFact documents, in one process and one run:

- plain: `SentenceTransformer.encode(texts, batch_size=32)` (and 64 with --sweep), model loaded,
  torch using every CPU: what a user would write without vectune;
- ray: the corpus read and embedded as the evaluate stage does it
  (`vectune.evaluate.stage.embedded_corpus`: `DomainData.corpus_dataset` into
  `vectune.embed.embed_dataset`) with the embedding cache disabled (batch 1024, the automatic
  actor plan), timed end to end: actor start and model load included.

`--sweep` adds the shapes around the default (batch 512/1024/2048 x 2 actors of 1 thread or
1 actor of 2 threads) and plain encode with batch 64. Plain encoding runs before and after
the Ray runs, and the ratio is taken against their mean, so drift in the machine's load
hits both sides alike.

    python benchmarks/encode.py --docs 2000 [--sweep] [--out benchmarks/results/encode.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "scifact"
GOAL = 1.15


def read_docs(corpus: Path, n: int) -> list[str]:
    """The first n raw JSONL lines of the corpus (the same documents every run)."""
    lines = []
    with open(corpus, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                lines.append(line.rstrip("\r\n"))
            if len(lines) == n:
                break
    if len(lines) < n:
        sys.exit(f"{corpus} has only {len(lines)} documents")
    return lines


def plain(model_path: str, texts: list[str], batch_size: int) -> dict:
    """Plain sentence-transformers in this process, every CPU to torch."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(model_path, device="cpu")
    model.encode(texts[:8], batch_size=8)  # warm-up: first-call allocations
    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    seconds = time.perf_counter() - start
    assert vectors.shape[0] == len(texts)
    return {"batch_size": batch_size, "threads": torch.get_num_threads(), "seconds": round(seconds, 2),
            "docs_per_s": round(len(texts) / seconds, 2)}


def ray_run(spec, model_path: str, batch_size: int, concurrency: int | None) -> dict:
    """The evaluate stage's corpus encoding (`embedded_corpus`, cache disabled), consumed to the end."""
    from vectune.cluster import plan_actors
    from vectune.data import DomainData
    from vectune.evaluate.stage import corpus_batching, embedded_corpus

    data = DomainData(spec)
    count = data.corpus.count  # the validation pass, outside the timing (the stage does it before Ray)
    plan = plan_actors(concurrency)
    batch, blocks = corpus_batching(count, batch_size, plan.actors)
    start = time.perf_counter()
    embedded, _ = embedded_corpus(spec, data, model_path, batch_size=batch_size, concurrency=concurrency,
                                  cache=False)
    n = 0
    for part in embedded.iter_batches(batch_size=None, batch_format="numpy"):
        n += len(part["doc_id"])
        assert part["embedding"].shape[1] == 384
    seconds = time.perf_counter() - start
    assert n == count, (n, count)
    return {"batch_size": batch_size, "effective_batch": batch, "read_blocks": blocks,
            "concurrency": concurrency, "actors": plan.actors, "threads": plan.threads,
            "cpus_per_actor": plan.cpus, "seconds": round(seconds, 2), "docs_per_s": round(n / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=2000, help="SciFact documents to encode (default 2000).")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR SciFact folder.")
    parser.add_argument("--sweep", action="store_true",
                        help="Also try batch 512/1024/2048 x 2x1 / 1x2 actors, and plain batch 64.")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "encode.json")
    args = parser.parse_args()

    import ray

    from vectune.cluster import init_ray
    from vectune.embed import resolve_model
    from vectune.spec import validate_dict
    from vectune.spec.runtime import RuntimeSpec

    model_path = resolve_model("all-MiniLM-L6-v2")
    lines = read_docs(args.data / "corpus.jsonl", args.docs)
    records = [json.loads(line) for line in lines]
    texts = [f"{r.get('title') or ''} {r.get('text') or ''}".strip() for r in records]

    with tempfile.TemporaryDirectory(prefix="vectune-bench-") as tmp:
        (Path(tmp) / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        spec = validate_dict({"version": 1, "name": "bench", "data": {"root": tmp, "corpus": {"path": "corpus.jsonl"}},
                              "runtime": {"runs": str(Path(tmp) / "runs")}}, "benchmark")
        load = [os.getloadavg()]
        results: dict = {"plain": [], "ray": []}
        print(f"plain encode, {len(texts)} docs ...", flush=True)
        results["plain"].append(plain(model_path, texts, 32))
        print(results["plain"][-1], flush=True)

        init_ray(RuntimeSpec())
        shapes = [(1024, None)]  # the default: batch 1024, automatic actor plan
        if args.sweep:
            shapes += [(b, c) for b in (512, 1024, 2048) for c in (2, 1)]
        for batch_size, concurrency in shapes:
            print(f"ray: batch {batch_size}, concurrency {concurrency or 'auto'} ...", flush=True)
            row = ray_run(spec, model_path, batch_size, concurrency)
            row["default"] = (batch_size, concurrency) == (1024, None)
            results["ray"].append(row)
            print(row, flush=True)
        ray.shutdown()

        for batch_size in ((64, 32) if args.sweep else (32,)):
            print(f"plain encode, batch {batch_size} ...", flush=True)
            results["plain"].append(plain(model_path, texts, batch_size))
            print(results["plain"][-1], flush=True)
        load.append(os.getloadavg())

    import ray as _ray
    import sentence_transformers
    import torch

    baseline_runs = [r["docs_per_s"] for r in results["plain"] if r["batch_size"] == 32]
    baseline = sum(baseline_runs) / len(baseline_runs)
    default = next(r for r in results["ray"] if r["default"])
    best = max(results["ray"], key=lambda r: r["docs_per_s"])
    best_plain = max(results["plain"], key=lambda r: r["docs_per_s"])
    report = {
        "benchmark": "encode",
        "docs": len(texts),
        "data": f"{args.data / 'corpus.jsonl'} (first {len(texts)} documents, title + ' ' + text)",
        "model": "all-MiniLM-L6-v2 (packaged)",
        "baseline": "SentenceTransformer.encode(texts, batch_size=32), model loaded, torch on every CPU; "
                    "mean of a run before and a run after the Ray runs",
        "ray_timing": "end to end: read, actor start, model load, encode, results back on the driver",
        "baseline_docs_per_s": round(baseline, 2),
        "default_docs_per_s": default["docs_per_s"],
        "ratio": round(default["docs_per_s"] / baseline, 3),
        "best": best,
        "best_ratio": round(best["docs_per_s"] / baseline, 3),
        "ratio_vs_best_plain": round(default["docs_per_s"] / best_plain["docs_per_s"], 3),
        "goal": GOAL,
        "meets_goal": default["docs_per_s"] / baseline >= GOAL,
        "plain": results["plain"],
        "ray": results["ray"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_before_after": [list(map(lambda x: round(x, 2), la)) for la in load]},
        "versions": {"python": platform.python_version(), "ray": _ray.__version__, "torch": torch.__version__,
                     "sentence-transformers": sentence_transformers.__version__},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp_out, args.out)
    print(json.dumps({k: report[k] for k in ("baseline_docs_per_s", "default_docs_per_s", "ratio", "best_ratio",
                                            "meets_goal")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
