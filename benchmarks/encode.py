"""Encoding throughput: the evaluate stage's Ray Data encoder against plain `model.encode`.

On the same SciFact documents, in one process and one run:

- plain: `SentenceTransformer.encode(texts, batch_size=32)` (and 64 with --sweep), model loaded,
  torch using every CPU: what a user would write without vectune; in fp32, and in bf16 under
  `torch.autocast` (what `model.precision: bf16` does);
- ray: the corpus read and embedded as the evaluate stage does it
  (`vectune.embed.corpus.embedded_corpus`: `DomainData.corpus_dataset` into
  `vectune.embed.embed_dataset`) with the embedding cache disabled (batch 1024, the automatic
  actor plan), timed end to end: actor start and model load included; fp32 and bf16;
- int8: `model.precision: int8` (the transformer as an int8 ONNX Runtime graph, built before any
  timing: it is built once per model and kept): the stage against plain fp32 (goal >= 2.5x,
  moonshot 3x), and plain sentence-transformers running the same int8 model in this process
  (`load_model(..., precision="int8")`, every CPU to ONNX Runtime): the overhead of the stage;
- quality (`--quality`, with `--spec` and `--tuned`): the evaluate stage's metrics on the spec's
  split for the base and the tuned model, fp32 against int8 (goal: nDCG@10 within 0.005);
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
INT8_GOAL, INT8_MOONSHOT, INT8_QUALITY = 2.5, 3.0, 0.005


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


def plain(model_path: str, texts: list[str], batch_size: int, precision: str = "fp32", int8_root: str | None = None
          ) -> dict:
    """Plain sentence-transformers in this process, every CPU to torch (to ONNX Runtime for int8)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from vectune.embed.encoder import autocast
    from vectune.embed.models import load_model

    torch.set_num_threads(os.cpu_count() or 1)
    if precision == "int8":
        model = load_model(model_path, precision="int8", cache_root=int8_root, threads=os.cpu_count() or 1)
    else:
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


def gpu_mode(model_path: str, texts: list[str], batch_size: int = 128, steps: int = 10) -> dict:
    """On a CUDA GPU: plain encode docs/s in fp32 and fp16 (what `model.precision: fp16` does:
    half weights), vectune's Encoder in fp16 (its own overhead), and a training step of the
    contrastive loss in fp32 against bf16 autocast (what `train.precision: bf16` does)."""
    import dataclasses

    import torch
    from sentence_transformers import SentenceTransformer, losses

    from vectune.embed import Encoder, EncoderConfig, model_fingerprint

    out: dict = {"device": torch.cuda.get_device_name(0), "docs": len(texts), "batch_size": batch_size}

    def timed_encode(model, precision: str) -> float:
        model.encode(texts[:batch_size], batch_size=batch_size)
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
        torch.cuda.synchronize()
        return len(texts) / (time.perf_counter() - start)

    model = SentenceTransformer(model_path, device="cuda")
    model.max_seq_length = 256
    out["plain_fp32_docs_per_s"] = round(timed_encode(model, "fp32"), 1)
    model.half()
    out["plain_fp16_docs_per_s"] = round(timed_encode(model, "fp16"), 1)
    out["fp16_vs_fp32"] = round(out["plain_fp16_docs_per_s"] / out["plain_fp32_docs_per_s"], 2)
    config = EncoderConfig(model_path=model_path, fingerprint=model_fingerprint(model_path), max_seq_length=256,
                           batch_size=batch_size, device="cuda")
    encoder = Encoder(dataclasses.replace(config, precision="fp16"))
    encoder.encode(texts[:batch_size])
    torch.cuda.synchronize()
    start = time.perf_counter()
    encoder.encode(texts)
    torch.cuda.synchronize()
    out["encoder_fp16_docs_per_s"] = round(len(texts) / (time.perf_counter() - start), 1)

    def step_seconds(autocast: bool) -> float:
        net = SentenceTransformer(model_path, device="cuda")
        net.max_seq_length = 256
        loss = losses.MultipleNegativesRankingLoss(net)
        optimizer = torch.optim.AdamW(net.parameters(), lr=2e-5)
        queries, docs = texts[:64], texts[64:128]
        times = []
        for _ in range(steps + 2):
            torch.cuda.synchronize()
            start = time.perf_counter()
            features = [net.tokenize(queries), net.tokenize(docs)]
            features = [{k: v.to("cuda") for k, v in f.items()} for f in features]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                value = loss(features, None)
            value.backward()
            optimizer.step()
            optimizer.zero_grad()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return sum(times[2:]) / steps  # the first two warm the kernels up

    out["train_step_fp32_s"] = round(step_seconds(False), 4)
    out["train_step_bf16_s"] = round(step_seconds(True), 4)
    out["train_bf16_vs_fp32"] = round(out["train_step_fp32_s"] / out["train_step_bf16_s"], 2)
    out["train_step"] = "MultipleNegativesRankingLoss, batch 64 (query, document) pairs, seq 256, AdamW"
    return out


def quality(spec_path: Path, tuned: str | None) -> dict:
    """The evaluate stage on the spec's split: base (and tuned) model, fp32 against int8.

    Runs through `vectune.pipeline.evaluate`, so it uses the spec's runs storage and its
    embedding cache (the fp32 vectors of a full run are not encoded again)."""
    from vectune import pipeline
    from vectune.spec import load_spec

    spec = load_spec(spec_path)
    out: dict = {"spec": str(spec_path), "split": spec.evaluate.split, "goal_abs_ndcg10_diff": INT8_QUALITY}
    for role, model in [("base", None)] + ([("tuned", tuned)] if tuned else []):
        row = {}
        for precision in ("fp32", "int8"):
            variant = spec.derived(model=spec.model.model_copy(update={"precision": precision}))
            started = time.perf_counter()
            result = pipeline.evaluate(variant, model=model)
            summary = result["base" if model is None else "model"]
            row[precision] = {"metrics": summary["metrics"], "seconds": round(time.perf_counter() - started, 1),
                              "run_id": result["run_id"]}
            print(role, precision, row[precision], flush=True)
        diff = {m: round(row["int8"]["metrics"][m] - row["fp32"]["metrics"][m], 4) for m in row["fp32"]["metrics"]}
        out[role] = {**row, "int8_minus_fp32": diff,
                     "meets_goal": abs(diff.get("ndcg@10", 1.0)) <= INT8_QUALITY, "model": model or spec.model.base}
        print(role, "int8 - fp32:", diff, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=2000, help="SciFact documents to encode (default 2000).")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR SciFact folder.")
    parser.add_argument("--sweep", action="store_true",
                        help="Also try batch 512/1024/2048 x 2x1 / 1x2 actors, and plain batch 64.")
    parser.add_argument("--ceiling-batches", type=int, nargs="+", default=[32],
                        help="Batch sizes for the 2 x 1-thread ceiling; the best counts (default 32).")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                        help="Also time model.precision int8 (the stage and plain; default on).")
    parser.add_argument("--quality", action="store_true",
                        help="Also score --spec's split with the base and --tuned models in fp32 and int8.")
    parser.add_argument("--spec", type=Path, default=REPO / "specs" / "scifact.yaml",
                        help="The spec whose data, split and runs storage --quality uses (its caches too).")
    parser.add_argument("--tuned", type=str, default=None, help="A tuned model folder for --quality.")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "encode.json")
    parser.add_argument("--quality-only", action="store_true", help="Only --quality (no timing).")
    parser.add_argument("--gpu", action="store_true",
                        help="Only the GPU mode: fp16 vs fp32 encode docs/s and a training step (needs CUDA).")
    args = parser.parse_args()

    if args.quality_only:
        report = {"benchmark": "encode --quality-only", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "quality": quality(args.spec, args.tuned)}
        out = args.out.with_name("encode_int8_quality.json") if args.out.name == "encode.json" else args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        return

    if args.gpu:
        import torch

        from vectune.embed import resolve_model

        if not torch.cuda.is_available():
            sys.exit("--gpu needs a CUDA GPU; torch sees none")
        lines = read_docs(args.data / "corpus.jsonl", args.docs)
        texts = [f"{r.get('title') or ''} {r.get('text') or ''}".strip() for r in map(json.loads, lines)]
        report = {"benchmark": "encode --gpu", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "torch": torch.__version__, **gpu_mode(resolve_model("all-MiniLM-L6-v2"), texts)}
        out = args.out.with_name("encode_gpu.json") if args.out.name == "encode.json" else args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        return

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
        precisions = ("fp32", "bf16") + (("int8",) if args.int8 else ())
        int8_root = None
        if args.int8:  # built once per model and kept (as a user's first int8 run does), outside the timing
            from vectune.embed import encoder_config, int8, model_fingerprint

            int8_root = encoder_config(spec, model_path, role="document").int8_root
            started = time.perf_counter()
            graph = int8.int8_graph(model_path, model_fingerprint(model_path), int8_root)
            results["int8_graph"] = {"path": str(graph), "build_s": round(time.perf_counter() - started, 1),
                                     "mib": round(graph.stat().st_size / 2**20, 1)}
            print("int8 graph:", results["int8_graph"], flush=True)
        for precision in precisions:
            print(f"plain encode {precision}, {len(texts)} docs ...", flush=True)
            results["plain"].append(plain(model_path, texts, 32, precision, int8_root))
            print(results["plain"][-1], flush=True)

        init_ray(RuntimeSpec())
        shapes = [(1024, None, p) for p in precisions]  # the default shape: batch 1024, automatic plan
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

        again = [(32, p) for p in reversed(precisions)] + ([(64, "fp32")] if args.sweep else [])
        for batch_size, precision in again:
            print(f"plain encode {precision}, batch {batch_size} ...", flush=True)
            results["plain"].append(plain(model_path, texts, batch_size, precision, int8_root))
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
                     "sentence-transformers": sentence_transformers.__version__,
                     **({"onnxruntime": __import__("onnxruntime").__version__} if args.int8 else {})},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if args.int8:
        i8 = default("int8")
        stage_vs_fp32 = i8["docs_per_s"] / baseline("fp32")
        report["int8"] = {
            "graph": results["int8_graph"],
            "baseline_docs_per_s": round(baseline("int8"), 2),
            "stage_docs_per_s": i8["docs_per_s"],
            "ratio_int8_stage_vs_plain_fp32": round(stage_vs_fp32, 3),
            "ratio_int8_stage_vs_plain_int8": round(i8["docs_per_s"] / baseline("int8"), 3),
            "ratio_plain_int8_vs_plain_fp32": round(baseline("int8") / baseline("fp32"), 3),
            "ratio_bf16_stage_vs_plain_fp32": report["ratio_bf16_stage_vs_plain_fp32"],
            "phases": i8["phases"],
            "goal": INT8_GOAL, "moonshot": INT8_MOONSHOT,
            "meets_goal": stage_vs_fp32 >= INT8_GOAL, "meets_moonshot": stage_vs_fp32 >= INT8_MOONSHOT,
        }
    if args.quality:
        report["quality"] = quality(args.spec, args.tuned)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp_out, args.out)
    print(json.dumps({k: report[k] for k in ("baseline_docs_per_s", "default_docs_per_s", "ratio", "encoding_ratio",
                                            "ratio_bf16_vs_plain_bf16", "ratio_bf16_stage_vs_plain_fp32",
                                            "ceiling_ratio", "meets_goal", "meets_goal_with_bf16_stage")}, indent=2))
    for key in ("int8", "quality"):
        if key in report:
            print(json.dumps({key: {k: v for k, v in report[key].items() if k not in ("phases", "graph")}}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
