"""Encoding throughput: the evaluate stage's Ray Data encoder against plain `model.encode`.

On the same SciFact documents, in one process and one run:

- plain: `SentenceTransformer.encode(texts, batch_size=32)` (and 64 with --sweep), model loaded,
  torch using every CPU: what a user would write without vectune; in fp32, and in bf16 under
  `torch.autocast` (what `model.precision: bf16` does);
- ray: the corpus read and embedded as the evaluate stage does it
  (`vectune.embed.corpus.embedded_corpus`: `DomainData.corpus_dataset` into
  `vectune.embed.embed_dataset`) with the embedding cache disabled (batch 1024, the automatic
  actor plan), timed end to end: actor start and model load included; fp32 and bf16;
- ceiling: two plain processes of one torch thread each, each with half the documents, started
  together (models loaded first): the most any arrangement of CPU workers can get out of this
  machine without changing the arithmetic. If it is under the goal, no actor/batch shape reaches it.

`--sweep` adds the shapes around the default (batch 512/1024/2048 x 2 actors of 1 thread or
1 actor of 2 threads) and plain encode with batch 64. Plain encoding runs before and after
the Ray runs, and each ratio is taken against their mean, so drift in the machine's load
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


def plain(model_path: str, texts: list[str], batch_size: int, precision: str = "fp32") -> dict:
    """Plain sentence-transformers in this process, every CPU to torch."""
    import torch
    from sentence_transformers import SentenceTransformer

    from vectune.embed.encoder import autocast

    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(model_path, device="cpu")
    model.encode(texts[:8], batch_size=8)  # warm-up: first-call allocations
    context = autocast(precision, "cpu")  # the same context vectune's encoder runs in
    start = time.perf_counter()
    with context:
        vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                               show_progress_bar=False)
    seconds = time.perf_counter() - start
    assert vectors.shape[0] == len(texts)
    return {"batch_size": batch_size, "precision": precision, "threads": torch.get_num_threads(),
            "seconds": round(seconds, 2), "docs_per_s": round(len(texts) / seconds, 2)}


_HALF = """
import json, sys, time, torch
from sentence_transformers import SentenceTransformer
torch.set_num_threads(1)
texts = json.load(open(sys.argv[2]))
model = SentenceTransformer(sys.argv[1], device="cpu")
model.encode(texts[:8], batch_size=8)
print("ready", flush=True)
sys.stdin.readline()
t0 = time.time()
model.encode(texts, batch_size=int(sys.argv[3]), normalize_embeddings=True, show_progress_bar=False)
print(json.dumps([t0, time.time()]), flush=True)
"""


def ceiling(model_path: str, texts: list[str], tmp: Path, batch_size: int = 32) -> dict:
    """Two 1-thread plain processes on half the documents each, released together."""
    import subprocess

    halves = [texts[0::2], texts[1::2]]  # interleaved: both halves get the same mix of lengths
    procs = []
    for i, half in enumerate(halves):
        path = tmp / f"half{i}.json"
        path.write_text(json.dumps(half))
        procs.append(subprocess.Popen([sys.executable, "-c", _HALF, model_path, str(path), str(batch_size)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}))
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    spans = [json.loads(p.stdout.readline()) for p in procs]
    for p in procs:
        p.wait()
    seconds = max(b for _, b in spans) - min(a for a, _ in spans)
    return {"processes": 2, "threads_each": 1, "batch_size": batch_size, "seconds": round(seconds, 2),
            "docs_per_s": round(len(texts) / seconds, 2)}


def _timed_encoder(log: Path):
    """vectune's Encoder, unchanged, plus a line per batch in `log`: when the actor was
    constructed (model loaded), when the batch started and ended. Defined here, so Ray
    pickles it by value and the actors run it."""
    from vectune.embed.encoder import Encoder

    class TimedEncoder(Encoder):
        def __init__(self, *args, **kwargs):
            self._born = time.time()
            super().__init__(*args, **kwargs)
            self._ready = time.time()

        def __call__(self, batch: dict) -> dict:
            start = time.time()
            out = super().__call__(batch)
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps([os.getpid(), self._born, self._ready, start, time.time(),
                                     len(batch[self.text_column])]) + "\n")
            return out

    return TimedEncoder


def actor_phases(log: Path, start: float, end: float) -> dict:
    """Where the end-to-end time went, from the actors' own clocks (seconds from the start)."""
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    actors = {r[0]: r for r in rows}.values()  # one line per actor: construction times are per actor
    first = min(r[3] for r in rows)
    last = max(r[4] for r in rows)
    docs = sum(r[5] for r in rows)
    return {
        "actors": len(actors),
        "actors_constructed_s": sorted(round(r[1] - start, 2) for r in actors),
        "models_loaded_s": sorted(round(r[2] - start, 2) for r in actors),
        "first_batch_s": round(first - start, 2),
        "last_batch_done_s": round(last - start, 2),
        "end_s": round(end - start, 2),
        "encoding_docs_per_s": round(docs / (last - first), 2),
    }


def ray_run(spec, model_path: str, batch_size: int, concurrency: int | None, precision: str = "fp32",
            log: Path | None = None) -> dict:
    """The evaluate stage's corpus encoding (`embedded_corpus`, cache disabled), consumed to the end.

    With `log`, the actors run `_timed_encoder` and the result gets their phases."""
    import vectune.embed.dataset as embed_dataset
    from vectune.data import DomainData
    from vectune.embed import plan_actors
    from vectune.embed.corpus import corpus_batching, embedded_corpus

    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"precision": precision})})
    data = DomainData(spec)
    count = data.corpus.count  # the validation pass, outside the timing (the stage does it before Ray)
    plan = plan_actors(concurrency)
    batch, blocks = corpus_batching(count, batch_size, plan.actors)
    encoder = embed_dataset.Encoder
    if log is not None:
        log.unlink(missing_ok=True)
        embed_dataset.Encoder = _timed_encoder(log)
    try:
        wall = time.time()
        start = time.perf_counter()
        embedded, _ = embedded_corpus(spec, data, model_path, plan, batch_size=batch_size, cache=False)
        n = 0
        for part in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            n += len(part["doc_id"])
            assert part["embedding"].shape[1] == 384
        seconds = time.perf_counter() - start
    finally:
        embed_dataset.Encoder = encoder
    assert n == count, (n, count)
    row = {"batch_size": batch_size, "precision": precision, "effective_batch": batch, "read_blocks": blocks,
           "concurrency": concurrency, "actors": plan.actors, "threads": plan.threads,
           "cpus_per_actor": plan.cpus, "seconds": round(seconds, 2), "docs_per_s": round(n / seconds, 2)}
    if log is not None:
        row["phases"] = actor_phases(log, wall, wall + seconds)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=2000, help="SciFact documents to encode (default 2000).")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR SciFact folder.")
    parser.add_argument("--sweep", action="store_true",
                        help="Also try batch 512/1024/2048 x 2x1 / 1x2 actors, and plain batch 64.")
    parser.add_argument("--ceiling-batches", type=int, nargs="+", default=[32],
                        help="Batch sizes for the 2 x 1-thread ceiling; the best counts (default 32).")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "encode.json")
    args = parser.parse_args()

    import ray

    from vectune.runtime import init_ray
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
        for precision in ("fp32", "bf16"):
            print(f"plain encode {precision}, {len(texts)} docs ...", flush=True)
            results["plain"].append(plain(model_path, texts, 32, precision))
            print(results["plain"][-1], flush=True)

        init_ray(RuntimeSpec())
        shapes = [(1024, None, "fp32"), (1024, None, "bf16")]  # the default shape: batch 1024, automatic plan
        if args.sweep:
            shapes += [(b, c, "fp32") for b in (512, 1024, 2048) for c in (2, 1)]
        for batch_size, concurrency, precision in shapes:
            print(f"ray: batch {batch_size}, concurrency {concurrency or 'auto'}, {precision} ...", flush=True)
            row = ray_run(spec, model_path, batch_size, concurrency, precision, log=Path(tmp) / "spans.jsonl")
            row["default"] = (batch_size, concurrency) == (1024, None)
            results["ray"].append(row)
            print(row, flush=True)
        ray.shutdown()

        results["ceilings"] = []
        for batch_size in args.ceiling_batches:
            print(f"ceiling: 2 plain processes x 1 thread, batch {batch_size} ...", flush=True)
            results["ceilings"].append(ceiling(model_path, texts, Path(tmp), batch_size))
            print(results["ceilings"][-1], flush=True)
        results["ceiling"] = max(results["ceilings"], key=lambda r: r["docs_per_s"])

        for batch_size, precision in [(32, "bf16"), (32, "fp32")] + ([(64, "fp32")] if args.sweep else []):
            print(f"plain encode {precision}, batch {batch_size} ...", flush=True)
            results["plain"].append(plain(model_path, texts, batch_size, precision))
            print(results["plain"][-1], flush=True)
        load.append(os.getloadavg())

    import ray as _ray
    import sentence_transformers
    import torch

    def baseline(precision: str) -> float:
        runs = [r["docs_per_s"] for r in results["plain"] if r["batch_size"] == 32 and r["precision"] == precision]
        return sum(runs) / len(runs)

    def default(precision: str) -> dict:
        return next(r for r in results["ray"] if r["default"] and r["precision"] == precision)

    fp32, bf16 = default("fp32"), default("bf16")
    best = max((r for r in results["ray"] if r["precision"] == "fp32"), key=lambda r: r["docs_per_s"])
    ratio = fp32["docs_per_s"] / baseline("fp32")
    report = {
        "benchmark": "encode",
        "docs": len(texts),
        "data": f"{args.data / 'corpus.jsonl'} (first {len(texts)} documents, title + ' ' + text)",
        "model": "all-MiniLM-L6-v2 (packaged)",
        "baseline": "SentenceTransformer.encode(texts, batch_size=32), model loaded, torch on every CPU; "
                    "mean of a run before and a run after the Ray runs, per precision",
        "ray_timing": "end to end: read, actor start, model load, encode, results back on the driver",
        "baseline_docs_per_s": {"fp32": round(baseline("fp32"), 2), "bf16": round(baseline("bf16"), 2)},
        "default_docs_per_s": {"fp32": fp32["docs_per_s"], "bf16": bf16["docs_per_s"]},
        "ratio": round(ratio, 3),
        "phases": fp32["phases"],
        "phases_note": "seconds from the start of the Ray run, by the actors' clocks; encoding_docs_per_s is "
                       "the rate from the first batch's start to the last batch's end (model already loaded)",
        "encoding_ratio": round(fp32["phases"]["encoding_docs_per_s"] / baseline("fp32"), 3),
        "ratio_bf16_vs_plain_bf16": round(bf16["docs_per_s"] / baseline("bf16"), 3),
        "ratio_bf16_stage_vs_plain_fp32": round(bf16["docs_per_s"] / baseline("fp32"), 3),
        "ceiling_docs_per_s": results["ceiling"]["docs_per_s"],
        "ceiling_ratio": round(results["ceiling"]["docs_per_s"] / baseline("fp32"), 3),
        "best": best,
        "best_ratio": round(best["docs_per_s"] / baseline("fp32"), 3),
        "goal": GOAL,
        "meets_goal": ratio >= GOAL,
        "meets_goal_with_bf16_stage": bf16["docs_per_s"] / baseline("fp32") >= GOAL,
        "plain": results["plain"],
        "ray": results["ray"],
        "ceiling": results["ceiling"],
        "ceilings": results["ceilings"],
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
    print(json.dumps({k: report[k] for k in ("baseline_docs_per_s", "default_docs_per_s", "ratio", "encoding_ratio",
                                            "ratio_bf16_vs_plain_bf16", "ratio_bf16_stage_vs_plain_fp32",
                                            "ceiling_ratio", "meets_goal", "meets_goal_with_bf16_stage")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
