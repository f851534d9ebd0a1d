"""Queries across the shards of one embedded version: dense search and hybrid (dense + sparse,
fused across shards), each asked for the payload fields `doc_id` and `title` and for none, p50 /
p95 per query in one warm process. For comparing two commits on the same store (the second run
passes `--reuse`):

    git worktree add /tmp/before <commit>
    python benchmarks/shard_queries.py --src /tmp/before/src --out /tmp/before.json
    python benchmarks/shard_queries.py --src src --reuse --out /tmp/after.json
    python benchmarks/shard_queries.py --src /tmp/before/src --reuse --out /tmp/before2.json  # noise

The store: `--points` clustered 384-d unit vectors (200 centres), each with a random sparse vector
(Zipf-distributed term ids, as BM25's are) and a short payload, in shards of `--shard-points`, on
tmpfs; HNSW m 16, ef_construct 100, searched at ef 64. The vectors and queries are seeded: every
run builds the same store and asks the same queries.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

DIM = 384
FIELDS = ["doc_id", "title"]


def _sparse(rng, n: int, vocabulary: int = 50_000):
    from vectune.index.store import Sparse

    out = []
    for _ in range(n):
        idx = sorted({int(i) % vocabulary for i in rng.zipf(1.3, 30)})
        out.append(Sparse(idx, [float(v) for v in rng.random(len(idx)) + 0.1]))
    return out


def _build(store, points: int, shard_points: int) -> float:
    from vectune.index.store import Hnsw, Layout

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, DIM)).astype(np.float32)
    store.create("v", Layout(size=DIM, distance="cosine", sparse=True, shard_points=shard_points), stamp={})
    start = time.perf_counter()
    for s in range(0, points, 5000):
        n = min(5000, points - s)
        x = centres[rng.integers(0, 200, n)] + 0.5 * rng.normal(size=(n, DIM)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(s, s + n)]
        payloads = [{"doc_id": f"d{i}", "title": f"title of document {i} " * 3} for i in range(s, s + n)]
        store.upsert("v", ids, x, payloads, _sparse(rng, n), new_ids=True)
    store.build_index("v", Hnsw(m=16, ef_construct=100, ef=64))
    return time.perf_counter() - start


def _timed(fn, n: int, warm: int = 20) -> dict:
    for i in range(warm):
        fn(i)
    ms = []
    for i in range(warm, warm + n):
        start = time.perf_counter()
        fn(i)
        ms.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default="src", help="the vectune source tree to measure (a worktree's src)")
    ap.add_argument("--points", type=int, default=120_000)
    ap.add_argument("--shard-points", type=int, default=30_000)
    ap.add_argument("--queries", type=int, default=280)
    ap.add_argument("--store", default="/dev/shm/vectune-shard-queries")
    ap.add_argument("--reuse", action="store_true", help="query the store an earlier run built")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.src).resolve()))
    from vectune.index.engines import open_store
    from vectune.index.store import Target

    if not args.reuse:
        shutil.rmtree(args.store, ignore_errors=True)
    store = open_store(Target(path=args.store))
    try:
        built = None if args.reuse else round(_build(store, args.points, args.shard_points), 1)
        rng = np.random.default_rng(1)
        centres = np.random.default_rng(0).normal(size=(200, DIM)).astype(np.float32)
        n = args.queries + 20
        queries = centres[rng.integers(0, 200, n)] + 0.5 * rng.normal(size=(n, DIM)).astype(np.float32)
        terms = _sparse(rng, n)
        dense = [q.tolist() for q in queries]
        out = {"src": str(Path(args.src).resolve()), "points": args.points, "shard_points": args.shard_points,
               "shards": len(store.version_record("v").get("parts") or ["shard"]), "build_seconds": built,
               "queries": args.queries, "cpu": platform.processor() or platform.machine(),
               "cpu_flags": sorted({f for f in Path("/proc/cpuinfo").read_text().split()
                                    if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")})}
        out["search_fields"] = _timed(lambda i: store.search("v", dense[i], 10, FIELDS, ef=64), args.queries)
        out["search_no_fields"] = _timed(lambda i: store.search("v", dense[i], 10, None, ef=64), args.queries)
        out["hybrid_fields"] = _timed(lambda i: store.hybrid("v", dense[i], terms[i], 10, FIELDS, ef=64), args.queries)
        out["hybrid_no_fields"] = _timed(lambda i: store.hybrid("v", dense[i], terms[i], 10, None, ef=64),
                                         args.queries)
    finally:
        store.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
