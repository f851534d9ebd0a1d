"""Scale: vectune's re-index, sync and search at N synthetic documents on this machine, with a tiny
random-weight 384-d model built here, so that the pipeline, not the model, is measured (issue 30).

For each size and precision, in its own process with its own local Ray (nothing carries over):

- `embed_only`: the re-index's read -> encode pipeline into a sink that drops rows (cold cache);
- `full`: `vectune reindex` into a new version, cold embedding cache, HNSW included (its build is
  `index_seconds`, also recorded in the version record);
- `full_cached`: the same again (`--full`, a new run id) with the cache warm: what a sync is compared with;
- `sync_unchanged`: the corpus file untouched (the stamp's shortcut: count, integrity, id checksum);
- `sync_no_change`: the same documents rewritten in another order (another file hash: the whole
  streamed diff runs, nothing is written);
- `sync_changed`: `--change` of the documents changed (half modified, a quarter removed, a quarter added);
- each with the peak RSS of every role (driver, encoder actors, the writer = the store's owner actor,
  other Ray workers), sampled every 0.2 s (benchmarks/reindex.py's `PeakRSS`);
- `search`: `vectune.index.search` as the CLI calls it (loads the model each call), and what a
  long-lived caller does (the encoder loaded and the store open once: encode the query, search the
  shard): p50 / p95 per query over `--queries` texts;
- `recall`: recall@10 of the engine's search (the version's `ef`) against exact search over every
  stored vector, for 1,000 sampled queries.

    python benchmarks/scale.py --sizes 100000 1000000 --precisions fp32 int8     # the issue's runs (hours)
    python benchmarks/scale.py --sizes 2000 --precisions fp32 --out /tmp/scale.json   # a smoke run
    python benchmarks/scale.py --sizes 1000000 --precisions fp32 --phases   # the full re-index alone

Results: benchmarks/results/scale.json (one entry per size and precision, with the CPU's flags).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from reindex import PeakRSS, change_corpus, embed_only, synthetic  # noqa: E402 - the same corpus and sampler as reindex.py

DIM = 384
PHASES = ("embed_only", "syncs", "search")


def tiny_model(folder: Path, seed: int = 0) -> str:
    """A 1-layer, 384-wide BERT with random weights and MiniLM's tokenizer (vectune's own
    `random_model`, the one the tests use): fast to run, 384-d like the real one."""
    from vectune.embed.models import random_model

    return random_model(folder, dim=DIM, layers=1, seed=seed)


def write_spec(folder: Path, model: str, precision: str, args) -> Path:
    spec = {"version": 1, "name": "scale", "data": {"corpus": {"path": str(folder / "corpus.jsonl")}},
            "model": {"base": model, "precision": precision, "max_seq_length": args.seq},
            "index": {"qdrant": {"path": str(folder / "qdrant")}, "embed_batch_size": args.embed_batch,
                      "batch_size": args.upsert_batch, "keep": 1,
                      **({} if args.shard_points is None else {"shard_points": args.shard_points or None}),
                      **({"on_disk_vectors": True, "hnsw": {"on_disk": True}} if args.on_disk else {})},
            "runtime": {"runs": str(folder / "runs")}}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _reindex(spec_path: Path, run_id: str, *, full: bool) -> dict:
    from vectune.index import reindex
    from vectune.runs import Run
    from vectune.spec import load_spec

    spec = load_spec(spec_path)
    with PeakRSS() as mem:
        start = time.perf_counter()
        result = reindex(spec, Run.create(spec, run_id), spec.model.base, full=full)
        seconds = time.perf_counter() - start
    return {"mode": result["mode"], "points": result["points"], "written": result.get("written"),
            "seconds": round(seconds, 2), "timings": result.get("timings"),
            "index_seconds": (result.get("index") or {}).get("seconds"), **mem.mib()}


def _search(spec_path: Path, queries: list[str], args) -> dict:
    """Per-query latency through the CLI's function and through a long-lived caller: its first
    pass over the queries right after it opened the shard (pages still on disk), then a second
    pass (the warm caller: what a service that has been answering sees)."""
    from vectune.embed import Encoder, encoder_config
    from vectune.index import collections as cols
    from vectune.index import search
    from vectune.index.engines import connect
    from vectune.spec import load_spec

    spec = load_spec(spec_path)
    cold = []
    for text in queries[:args.cold_queries]:
        start = time.perf_counter()
        search(spec, text, k=10)
        cold.append(time.perf_counter() - start)
    store = connect(spec)
    try:
        live = cols.live_collection(store, cols.alias_name(spec))
        stamp = cols.read_stamp(store, live) or {}
        encoder = Encoder(encoder_config(spec, spec.model.base, role="query", cache=False,
                                         precision=stamp.get("precision") or "fp32"))
        encoder.encode(queries[:1])  # loaded once, as a long-lived caller keeps it
        passes = []
        for _ in range(2):
            total, embed, engine = [], [], []
            for text in queries:
                start = time.perf_counter()
                vector = encoder.encode([text])[0]
                mid = time.perf_counter()
                store.search(live, vector.tolist(), 10, ["doc_id", "title"], ef=(stamp.get("hnsw") or {}).get("ef"))
                total.append(time.perf_counter() - start)
                embed.append(mid - start)
                engine.append(time.perf_counter() - mid)
            passes.append((total, embed, engine))
    finally:
        store.close()

    def pct(xs: list[float]) -> dict:
        ms = np.asarray(xs) * 1000
        return {"n": len(xs), "p50_ms": round(float(np.percentile(ms, 50)), 2),
                "p95_ms": round(float(np.percentile(ms, 95)), 2)}

    (first, _, first_engine), (warm, embed, engine) = passes
    return {"cli_function_per_call": pct(cold), "first_pass_with_query_embedding": pct(first),
            "first_pass_engine_only": pct(first_engine), "warm_caller_with_query_embedding": pct(warm),
            "query_embedding_only": pct(embed), "engine_search_only": pct(engine)}


def _recall(spec_path: Path, queries: list[str], sample: int, efs: list[int] | None = None) -> dict:
    """recall@10 of the store's search against exact search over every stored vector, at the
    version's `ef` and at each of `efs` (with the engine's p50 / p95 per query at each)."""
    from vectune.embed import Encoder, encoder_config
    from vectune.index import collections as cols
    from vectune.index.engines import connect
    from vectune.spec import load_spec

    spec = load_spec(spec_path)
    store = connect(spec)
    try:
        live = cols.live_collection(store, cols.alias_name(spec))
        stamp = cols.read_stamp(store, live) or {}
        ids, chunks = [], []
        for page in store.scroll(live, None):
            got = store.retrieve(live, [r.id for r in page], vectors=True)
            ids += [r.id for r in got]
            chunks.append(np.asarray([r.vector for r in got], dtype=np.float32))
        x = np.concatenate(chunks)
        del chunks
        encoder = Encoder(encoder_config(spec, spec.model.base, role="query", cache=False,
                                         precision=stamp.get("precision") or "fp32"))
        q = np.asarray(encoder.encode(queries[:sample]), dtype=np.float32)
        exact = []
        for start in range(0, len(q), 100):
            scores = q[start:start + 100] @ x.T
            exact += [{ids[i] for i in row} for row in np.argpartition(-scores, 10, axis=1)[:, :10]]
        del x
        stamped = (stamp.get("hnsw") or {}).get("ef")
        by_ef = {}
        for ef in dict.fromkeys([stamped, *(efs or [])]):
            hits, took = 0, []
            for want, vector in zip(exact, q):
                start = time.perf_counter()
                got = {h.id for h in store.search(live, vector.tolist(), 10, ef=ef)}
                took.append(time.perf_counter() - start)
                hits += len(want & got)
            ms = np.asarray(took) * 1000
            by_ef[str(ef)] = {"recall@10": round(hits / (10 * len(q)), 4),
                              "engine_p50_ms": round(float(np.percentile(ms, 50)), 2),
                              "engine_p95_ms": round(float(np.percentile(ms, 95)), 2)}
    finally:
        store.close()
    return {"queries": len(q), "points": len(ids), "ef": stamped, "recall@10": by_ef[str(stamped)]["recall@10"],
            "by_ef": by_ef}


def _titles(corpus: Path, n: int, k: int) -> list[str]:
    """The titles of `k` documents drawn uniformly (seeded), streamed: query texts."""
    picks = set(np.random.default_rng(0).choice(n, min(k, n), replace=False).tolist())
    with open(corpus, encoding="utf-8") as fh:
        return [json.loads(line)["title"] for i, line in enumerate(fh) if i in picks]


def _swap_pairs(corpus: Path) -> None:
    """The same documents in another order (each pair of lines swapped): another file hash,
    the same corpus; streamed into a file beside it that replaces it."""
    tmp = corpus.with_name(corpus.name + ".reordered")
    with open(corpus, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as out:
        held = None
        for line in src:
            if held is None:
                held = line
            else:
                out.write(line)
                out.write(held)
                held = None
        if held is not None:
            out.write(held)
    os.replace(tmp, corpus)


def one(n: int, precision: str, args) -> dict:
    """Every measurement at one size and precision (run in a child process)."""
    from vectune.runtime import init_ray
    from vectune.spec.runtime import RuntimeSpec

    logging.basicConfig(level=logging.WARNING)
    init_ray(RuntimeSpec(num_cpus=args.cpus))
    work = Path(tempfile.mkdtemp(prefix="vectune-scale-", dir=args.dir))
    try:
        # built by the parent: building it here would import torch and sentence-transformers into
        # this process, the driver whose memory is measured, which a real driver never does
        model = args.model_path or tiny_model(Path(args.model_dir))
        synthetic(work, n)
        spec_path = write_spec(work, model, precision, args)
        corpus = work / "corpus.jsonl"
        out: dict = {"docs": n, "precision": precision, "phases": args.phases, "on_disk": args.on_disk,
                     "shard_points": "default" if args.shard_points is None else (args.shard_points or None)}
        want = set(args.phases)
        # the corpus is streamed, never held, to draw queries from it and to rewrite it (this
        # process is the driver whose memory is measured)
        queries = _titles(corpus, n, args.queries) if want & {"syncs", "search"} else []
        if "embed_only" in want:
            out["embed_only"] = embed_only(spec_path, cache=False)
        out["full"] = _reindex(spec_path, "full", full=True)  # every later phase needs the collection
        if "syncs" in want:
            out["full_cached"] = _reindex(spec_path, "cached", full=True)
            out["sync_unchanged"] = _reindex(spec_path, "unchanged", full=False)
            _swap_pairs(corpus)
            out["sync_no_change"] = _reindex(spec_path, "reordered", full=False)
            out["change"] = change_corpus(corpus, args.change, seed=1)
            out["sync_changed"] = _reindex(spec_path, "changed", full=False)
            cached = out["full_cached"]["seconds"]
            out["ratios_vs_full_cached"] = {k: round(out[k]["seconds"] / cached, 4)
                                            for k in ("sync_unchanged", "sync_no_change", "sync_changed")}
        if "embed_only" in want:
            out["ratio_full_vs_embed_only"] = round(out["full"]["seconds"] / out["embed_only"]["seconds"], 3)
        if "search" in want:
            out["search"] = _search(spec_path, queries, args)
            out["recall"] = _recall(spec_path, queries, args.recall_queries, args.recall_ef)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _plain(value):
    """numpy scalars (Ray and numpy hand some back) as plain JSON numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    ap.add_argument("--seq", type=int, default=32, help="model.max_seq_length")
    ap.add_argument("--embed-batch", type=int, default=1024)
    ap.add_argument("--upsert-batch", type=int, default=1024)
    ap.add_argument("--change", type=float, default=0.01)
    ap.add_argument("--phases", nargs="*", default=list(PHASES), choices=PHASES,
                    help="what to measure beside the full re-index (always run): embed_only, syncs (a cached full "
                         "re-index and the three syncs), search (latency and recall)")
    ap.add_argument("--queries", type=int, default=1000, help="query texts (document titles) for search and recall")
    ap.add_argument("--cold-queries", type=int, default=5, help="calls of the CLI's search function (each loads the model)")
    ap.add_argument("--recall-queries", type=int, default=1000)
    ap.add_argument("--recall-ef", type=int, nargs="*", default=[],
                    help="also measure recall@10 and the engine's latency at these search `ef` values")
    ap.add_argument("--on-disk", action="store_true",
                    help="index.on_disk_vectors and index.hnsw.on_disk: the engine maps vectors and graph from disk")
    ap.add_argument("--shard-points", type=int, default=None,
                    help="index.shard_points (the embedded engine's most points a shard); 0: one shard; "
                         "default: the spec's default")
    ap.add_argument("--cpus", type=int, default=None)
    ap.add_argument("--dir", default=None, help="work folder (default: the system's temp; the store is written there)")
    ap.add_argument("--model-dir", default=str(Path(tempfile.gettempdir()) / "vectune-scale-model"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scale.json")
    ap.add_argument("--one", nargs=2, metavar=("N", "PRECISION"), help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    Path(args.model_dir).mkdir(parents=True, exist_ok=True)
    if args.one:
        args.child_out.write_text(json.dumps(one(int(args.one[0]), args.one[1], args), default=_plain))
        return

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    report = {"cpu_flags": sorted({f for f in ("avx512_bf16", "avx2") if f" {f}" in flags}), "cores": os.cpu_count(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_at_start": os.getloadavg(), "runs": []}
    argv = [a for a in sys.argv[1:]] + ["--model-path", tiny_model(Path(args.model_dir))]
    for n in args.sizes:
        for precision in args.precisions:
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
                child = Path(fh.name)
            subprocess.run([sys.executable, __file__, *argv, "--one", str(n), precision, "--child-out", str(child)],
                           check=True)
            report["runs"].append({**json.loads(child.read_text()), "load_after": os.getloadavg()})
            child.unlink(missing_ok=True)
            args.out.write_text(json.dumps(report, indent=1))
            print(json.dumps({k: report["runs"][-1].get(k) for k in ("docs", "precision", "phases", "ratios_vs_full_cached",
                                                                     "ratio_full_vs_embed_only", "recall")}),
                  flush=True)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
