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


def plain(model_path: str, texts: list[str], batch_size: int, precision: str = "fp32") -> dict:
    """Plain sentence-transformers in this process, every CPU to torch (to ONNX Runtime for int8)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from vectune.embed.encoder import autocast
    from vectune.embed.models import load_model

    torch.set_num_threads(os.cpu_count() or 1)
    if precision == "int8":
        model = load_model(model_path, precision="int8", threads=os.cpu_count() or 1)
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


def recipe3_graph(model_path: str, folder: Path) -> Path:
    """Recipe 3, the dynamic int8 graph vectune shipped before recipe 4, rebuilt here for the
    side-by-side comparison: the export fused with attention as `Attention` (its Q, K, V
    projections stay fp32 inside it), `quantize_dynamic` of the MatMuls, int8 per channel,
    the feed-forward down-projections left in fp32. It runs one text at a time (dynamic
    activation scales would make a vector depend on its batch)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoConfig, AutoTokenizer

    from vectune.embed import _int8_build

    source = _int8_build.transformer_folder(model_path)
    config = AutoConfig.from_pretrained(source, local_files_only=True)
    plain_graph, _ = _int8_build._export(source, AutoTokenizer.from_pretrained(source, local_files_only=True),
                                         folder / "recipe3_plain.onnx")
    with _int8_build.quiet():
        fused = optimize_model(str(plain_graph), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size).model
    shapes = {t.name: list(t.dims) for t in fused.graph.initializer}
    down = [n.name for n in fused.graph.node if n.op_type == "MatMul" and len(n.input) > 1
            and shapes.get(n.input[1]) == [config.intermediate_size, config.hidden_size]]
    onnx.save(fused, str(folder / "recipe3_fused.onnx"))
    out = folder / "recipe3_qint8.onnx"
    with _int8_build.quiet():
        quantize_dynamic(str(folder / "recipe3_fused.onnx"), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=down, extra_options={"DefaultTensorType": 1})
    return out


def short_texts(n: int, seed: int = 0) -> list[str]:
    """`n` short documents made as benchmarks/reindex.py's synthetic corpus makes them (title of
    3-8 words and text of 15-60 over a Zipf vocabulary); ~30 tokens at max_seq_length 32."""
    import random

    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "pa", "qui", "dor", "len", "bra", "sto"]
    vocab = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(8000)})
    weights = [1 / (r + 1) for r in range(len(vocab))]
    return [" ".join(rng.choices(vocab, weights, k=rng.randint(3, 8))) + " "
            + " ".join(rng.choices(vocab, weights, k=rng.randint(15, 60))) + "." for _ in range(n)]


def scifact_slice(data: Path, n_docs: int) -> tuple[dict, dict, dict]:
    """(queries, documents, qrels) of the SciFact test split over a corpus slice: every labelled
    document, then the corpus in file order up to `n_docs`."""
    import csv

    qrels: dict[str, dict[str, int]] = {}
    with open(data / "qrels" / "test.tsv", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    labelled = {d for rel in qrels.values() for d in rel}
    rows = [json.loads(line) for line in open(data / "corpus.jsonl", encoding="utf-8") if line.strip()]
    picked = [r for r in rows if r["_id"] in labelled]
    picked += [r for r in rows if r["_id"] not in labelled][:max(0, n_docs - len(picked))]
    documents = {r["_id"]: f"{r.get('title') or ''} {r.get('text') or ''}".strip() for r in picked}
    queries = {}
    for line in open(data / "queries.jsonl", encoding="utf-8"):
        row = json.loads(line)
        if row["_id"] in qrels:
            queries[row["_id"]] = row["text"]
    return queries, documents, qrels


def interleaved(models: dict, texts: list[str], *, batch_size: int, chunk: int = 128,
                max_seq_length: int = 256) -> tuple[dict, dict]:
    """Every model over the same texts, chunk by chunk in rotating order, so the load of a
    shared machine falls on all alike: (vectors, {name: {"wall_s", "cpu_s"}})."""
    import numpy as np

    vectors = {name: [] for name in models}
    spent = {name: {"wall_s": 0.0, "cpu_s": 0.0} for name in models}
    names = list(models)
    for model in models.values():
        model.max_seq_length = max_seq_length
    for i, start in enumerate(range(0, len(texts), chunk)):
        part = texts[start:start + chunk]
        for name in names[i % len(names):] + names[:i % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            vectors[name].append(models[name].encode(part, batch_size=batch_size, normalize_embeddings=True,
                                                     convert_to_numpy=True, show_progress_bar=False))
            spent[name]["wall_s"] += time.perf_counter() - wall
            spent[name]["cpu_s"] += time.process_time() - cpu
    return ({n: np.concatenate(v) for n, v in vectors.items()},
            {n: {k: round(x, 2) for k, x in t.items()} for n, t in spent.items()})


def int8_recipes(models: dict[str, str], data: Path, n_docs: int, n_short: int, work: Path) -> dict:
    """Recipe 4 (static, the product) against recipe 3 (dynamic, one text a call) and fp32, for
    each model, side by side in this process: each recipe's build, cosine to fp32, nDCG@10 on
    a SciFact test slice, and speed on its documents and on short texts."""
    import shutil

    import numpy as np
    import torch

    from vectune.embed import int8
    from vectune.embed.int8_check import ndcg
    from vectune.embed.models import load_model, model_fingerprint

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    # a user cache of this run's own: a variant of the same fingerprint cached earlier (the copy of
    # a packaged model has its fingerprint) would be found there, and the build not timed
    os.environ["XDG_CACHE_HOME"] = str(work / "xdg")
    queries, documents, qrels = scifact_slice(data, n_docs)
    qids, dids = list(queries), list(documents)
    short = short_texts(n_short)
    out: dict = {"slice": {"split": "test", "queries": len(qids), "documents": len(dids)},
                 "short_texts": {"n": n_short, "max_seq_length": 32}, "threads": threads}
    for role, source in models.items():
        copy = work / role
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("onnx"))
        fingerprint = model_fingerprint(str(copy))
        row: dict = {"model": source, "fingerprint": fingerprint}
        started = time.perf_counter()
        built = int8.variant(str(copy), fingerprint)  # fresh: the copy holds none
        assert built.built, f"the int8 variant of {source} was found at {built.folder}, not built: no build to time"
        row["static_build"] = {"seconds": round(time.perf_counter() - started, 1), "tag": built.meta["tag"],
                               "step_seconds": built.meta["step_seconds"], "check_seconds": built.meta["check_seconds"],
                               "quality_at_build": built.meta["quality"], "check_at_build": built.meta["checks"][-1]}
        started = time.perf_counter()
        dynamic_graph = recipe3_graph(str(copy), work)
        row["dynamic_build_s"] = round(time.perf_counter() - started, 1)
        print(role, "built:", row["static_build"]["seconds"], "s static,", row["dynamic_build_s"], "s dynamic",
              flush=True)
        encoders = {"fp32": load_model(str(copy), device="cpu", threads=threads),
                    "static": load_model(str(copy), precision="int8", fingerprint=fingerprint, threads=threads),
                    "dynamic": int8.attach(load_model(str(copy), device="cpu", threads=threads), dynamic_graph,
                                           threads)}
        first = encoders["dynamic"][0]
        (getattr(first, "model", None) or first.auto_model).runner.token_budget = 1  # one text a call, as recipe 3
        for model in encoders.values():
            model.encode(["warm up"] * 8)
        d_vec, d_time = interleaved(encoders, [documents[d] for d in dids], batch_size=64)
        q_vec, q_time = interleaved(encoders, [queries[q] for q in qids], batch_size=64)
        s_vec, s_time = interleaved(encoders, short, batch_size=64, chunk=1024, max_seq_length=32)
        for name in encoders:
            cosine = np.concatenate([(d_vec[name] * d_vec["fp32"]).sum(1), (q_vec[name] * q_vec["fp32"]).sum(1)])
            row[name] = {"ndcg@10": round(ndcg(q_vec[name], d_vec[name], qids, dids, qrels), 4),
                         "cosine_to_fp32_mean": round(float(cosine.mean()), 5),
                         "cosine_to_fp32_min": round(float(cosine.min()), 5),
                         "short_cosine_to_fp32_mean": round(float((s_vec[name] * s_vec["fp32"]).sum(1).mean()), 5),
                         "documents": d_time[name], "queries": q_time[name], "short": s_time[name]}
        for name in ("static", "dynamic"):
            r = row[name]
            r["ndcg@10_minus_fp32"] = round(r["ndcg@10"] - row["fp32"]["ndcg@10"], 4)
            for part in ("documents", "short"):
                r[f"{part}_speedup_wall"] = round(row["fp32"][part]["wall_s"] / r[part]["wall_s"], 2)
                r[f"{part}_speedup_cpu"] = round(row["fp32"][part]["cpu_s"] / r[part]["cpu_s"], 2)
        print(role, json.dumps({k: row[k] for k in ("fp32", "static", "dynamic")}), flush=True)
        out[role] = row
        shutil.rmtree(copy, ignore_errors=True)
    return out


def evaluate_cli(spec: Path, model: str | None, order: list[str], work: Path) -> dict:
    """`vectune evaluate SPEC --set model.precision=P [--model M] --json` as a user runs it, each
    in a fresh runs folder (embedding and score caches cold), in `order` (fp32, int8, int8, fp32:
    a drift in the machine's load falls on both alike). The int8 variant is built beforehand
    (`vectune model export`), as the goal states. Both modes' metrics are kept (the spec serves
    one of them; dense is the model alone)."""
    import subprocess

    vectune = str(Path(sys.executable).parent / "vectune")
    runs = []
    for i, precision in enumerate(order):
        cmd = [vectune, "evaluate", str(spec), "--set", f"model.precision={precision}", "--json"]
        cmd += ["--model", model] if model else []
        load = os.getloadavg()[0]
        started = time.perf_counter()
        done = subprocess.run(cmd, env={**os.environ, "VECTUNE_RUNS": str(work / f"runs-{i}-{precision}")},
                              capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
        summary = json.loads(done.stdout)["model" if model else "base"]
        runs.append({"precision": precision, "seconds": round(seconds, 1), "load_average_1m_before": round(load, 2),
                     "load_average_1m_after": round(os.getloadavg()[0], 2), "mode": summary.get("mode"),
                     "metrics": summary["metrics"], "modes": summary.get("modes"),
                     "stage_seconds": summary.get("seconds")})
        print(runs[-1], flush=True)
    mean = {p: sum(r["seconds"] for r in runs if r["precision"] == p) / order.count(p) for p in set(order)}
    first = {p: runs[order.index(p)] for p in set(order)}
    modes = first["fp32"]["modes"] or {first["fp32"]["mode"] or "dense": first["fp32"]["metrics"]}
    ndcg = {mode: {p: (first[p]["modes"] or {mode: first[p]["metrics"]})[mode]["ndcg@10"] for p in first}
            for mode in modes}
    return {"command": f"vectune evaluate {spec} --set model.precision=P" + (f" --model {model}" if model else ""),
            "order": order, "runs": runs, "mean_seconds": {p: round(v, 1) for p, v in mean.items()},
            "speedup_int8": round(mean["fp32"] / mean["int8"], 2), "served_mode": first["fp32"]["mode"],
            "ndcg@10": ndcg, "ndcg@10_int8_minus_fp32": {m: round(v["int8"] - v["fp32"], 4) for m, v in ndcg.items()}}


_OVERHEAD_CHILD = r"""
import json, os, sys, time
t0 = time.time()
events = []
def mark(name, start, end=None):
    events.append([name, round(start - t0, 3), round((end or time.time()) - t0, 3)])
s = time.time(); import vectune.cli; mark("import vectune.cli", s)
s = time.time(); from vectune import pipeline; mark("import vectune.pipeline", s)
import vectune.embed.dataset as ed, vectune.embed.encoder as enc, vectune.precision as prec
import vectune.runtime as rt, vectune.index.stage as ist
from vectune.spec import load_spec

def timed(module, name, label):
    real = getattr(module, name)
    def wrapper(*a, **k):
        s = time.time()
        try:
            return real(*a, **k)
        finally:
            mark(label, s)
    setattr(module, name, wrapper)

timed(rt, "init_ray", "ray start (init_ray)")
timed(prec, "_ask", "precision decided (a probe task where Ray runs)")
timed(enc, "load_model", "model load (driver)")
timed(ist, "open_store", "store open (driver)")
timed(ist, "stage_store", "store open (its owner actor)")
real_encode = enc.Encoder._model_encode
def encode(self, texts):
    s = time.time()
    try:
        return real_encode(self, texts)
    finally:
        mark(f"encode {len(texts)} texts (driver)", s)
enc.Encoder._model_encode = encode
actor_log = sys.argv[3]

class TimedEncoder(ed.Encoder):  # defined in __main__: Ray ships it to the actors by value
    def __init__(self, *a, **k):
        self._born = time.time()
        super().__init__(*a, **k)
        self._ready = time.time()
        self._first = None

    def __call__(self, batch):
        if self._first is None:
            self._first = time.time()
            with open(actor_log, "a") as fh:
                fh.write(json.dumps([os.getpid(), self._born, self._ready, self._first]) + "\n")
        return super().__call__(batch)

ed.Encoder = TimedEncoder
s = time.time(); spec = load_spec(sys.argv[2]); mark("load spec", s)
s = time.time()
getattr(pipeline, sys.argv[1])(spec)
mark(sys.argv[1] + " (the whole call)", s)
for line in open(actor_log) if os.path.exists(actor_log) else []:
    pid, born, ready, first = json.loads(line)
    mark(f"actor {pid}: constructed -> model loaded", born, ready)
    mark(f"actor {pid}: first batch", first, first)
print(json.dumps(events))
"""


def overhead(data: Path, work: Path, precision: str) -> dict:
    """What a small `evaluate` and a small sync spend before the first text is encoded: each
    in a fresh Python process (as the CLI runs it), the phases timed by wrappers around
    vectune's own calls (Ray start, the precision probe, the store's open, the driver's model
    load, each encode call) and by the encoder actors' clocks (constructed, model loaded, first
    batch): seconds from the process's first line."""
    import csv
    import subprocess

    qrels: dict[str, dict[str, int]] = {}
    with open(data / "qrels" / "test.tsv", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if len(qrels) < 10 or row["query-id"] in qrels:
                qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    wanted = {d for rel in qrels.values() for d in rel}
    lines = [line for line in open(data / "corpus.jsonl", encoding="utf-8") if line.strip()]
    corpus = [line for line in lines if json.loads(line)["_id"] in wanted]
    corpus += [line for line in lines if json.loads(line)["_id"] not in wanted][:60 - len(corpus)]
    work.mkdir(parents=True, exist_ok=True)
    (work / "corpus.jsonl").write_text("".join(corpus), encoding="utf-8")
    queries = [line for line in open(data / "queries.jsonl", encoding="utf-8") if json.loads(line)["_id"] in qrels]
    (work / "queries.jsonl").write_text("".join(queries), encoding="utf-8")
    (work / "qrels").mkdir(exist_ok=True)
    (work / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{s}\n" for q, rel in qrels.items() for d, s in rel.items()), encoding="utf-8")
    spec = {"version": 1, "name": "overhead", "data": {"root": str(work), "corpus": {"path": "corpus.jsonl"},
                                                      "queries": {"path": "queries.jsonl"},
                                                      "splits": {"test": {"path": "qrels/test.tsv"}}},
            "model": {"precision": precision}, "evaluate": {"split": "test"},
            "index": {"qdrant": {"path": str(work / "qdrant")}}, "runtime": {"runs": str(work / "runs")}}
    (work / "spec.yaml").write_text(json.dumps(spec), encoding="utf-8")

    def child(call: str) -> list:
        started = time.time()
        log = work / f"actors-{time.time_ns()}.jsonl"
        done = subprocess.run([sys.executable, "-c", _OVERHEAD_CHILD, call, str(work / "spec.yaml"), str(log)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{call} failed: {done.stderr[-3000:]}")
        events = json.loads(done.stdout.strip().splitlines()[-1])
        return [*events, ["the process, start to exit (the parent's clock)", 0.0, round(time.time() - started, 2)]]

    out = {"precision": precision, "documents": len(corpus), "queries": len(queries)}
    python = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    out["python_start_s"] = round(time.perf_counter() - python, 2)
    out["evaluate"] = child("evaluate")
    child("reindex")  # the first, full build: what the sync below syncs
    edited = json.loads(corpus[-1])
    edited["text"] += " (edited)"
    (work / "corpus.jsonl").write_text("".join(corpus[:-1]) + json.dumps(edited) + "\n", encoding="utf-8")
    out["sync"] = child("reindex")  # one document changed: an incremental sync
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
    parser.add_argument("--int8-recipes", action="store_true",
                        help="Only int8 recipe 4 (static) against recipe 3 (dynamic) and fp32, side by side: build, "
                             "cosine, nDCG@10 on a SciFact test slice of --docs documents, speed; base and --tuned.")
    parser.add_argument("--short", type=int, default=4096, help="Short texts (~30 tokens) --int8-recipes times.")
    parser.add_argument("--evaluate-cli", action="store_true",
                        help="Only `vectune evaluate --spec` in fp32 and int8 (fp32, int8, int8, fp32), caches cold, "
                             "the int8 variant built first; with --tuned, that model too.")
    parser.add_argument("--overhead", action="store_true",
                        help="Only what a small evaluate and a small sync spend before the first text is encoded "
                             "(fp32 and int8, each in fresh processes).")
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

    if args.int8_recipes or args.evaluate_cli or args.overhead:
        from vectune.precision import cpu_info

        cpu = cpu_info()
        report = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "cpu": {"kind": cpu.kind, "model": cpu.model, "vnni": cpu.vnni, "cpus": os.cpu_count()},
                  "load_average_before": [round(x, 2) for x in os.getloadavg()]}
        with tempfile.TemporaryDirectory(prefix="vectune-bench-") as tmp:
            if args.int8_recipes:
                from vectune.embed import resolve_model

                name = "encode_int8_recipes.json"
                models = {"base": resolve_model("all-MiniLM-L6-v2"), **({"tuned": args.tuned} if args.tuned else {})}
                report.update(benchmark="encode --int8-recipes",
                              timing="each model encodes the same texts chunk by chunk in rotating order, in one "
                                     "process (wall and process CPU seconds summed per model); fp32 is plain "
                                     "sentence-transformers (torch), static and dynamic the same model with its "
                                     "transformer on ONNX Runtime", **int8_recipes(models, args.data, args.docs,
                                                                                   args.short, Path(tmp)))
            elif args.evaluate_cli:
                from vectune.embed.models import export_int8

                name, report["benchmark"], report["models"] = "encode_int8_evaluate.json", "encode --evaluate-cli", {}
                for role, model in [("base", None)] + ([("tuned", args.tuned)] if args.tuned else []):
                    built = export_int8(model or "all-MiniLM-L6-v2")
                    print(role, "variant", built["path"], "built now" if built["built"] else "found", flush=True)
                    report["models"][role] = {"variant": {k: built[k] for k in ("path", "built", "build_seconds")},
                                              **evaluate_cli(args.spec, model, ["fp32", "int8", "int8", "fp32"],
                                                             Path(tmp) / role)}
            else:
                name, report["benchmark"], report["runs"] = "encode_overhead.json", "encode --overhead", []
                report["phases"] = ("[name, start, end]: seconds from the child process's first line; the actors' "
                                    "lines by their own clocks")
                for precision in ("fp32", "int8"):
                    report["runs"].append(overhead(args.data, Path(tmp) / precision, precision))
                    print(json.dumps(report["runs"][-1]), flush=True)
        report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        out = args.out.with_name(name) if args.out.name == "encode.json" else args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
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
        if args.int8:  # built once per model and machine and kept (`vectune model export`), outside the timing
            from vectune.embed import int8, model_fingerprint

            started = time.perf_counter()
            found = int8.variant(model_path, model_fingerprint(model_path))
            graph = found.graph
            results["int8_graph"] = {"path": str(graph), "built_now": found.built,
                                     "seconds": round(time.perf_counter() - started, 1),
                                     "mib": round(graph.stat().st_size / 2**20, 1)}
            print("int8 graph:", results["int8_graph"], flush=True)
        for precision in precisions:
            print(f"plain encode {precision}, {len(texts)} docs ...", flush=True)
            results["plain"].append(plain(model_path, texts, 32, precision))
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
