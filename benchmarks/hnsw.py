"""Qdrant Edge's HNSW settings for the embedded store, chosen by measurement.

Builds one Edge shard of N clustered synthetic 384-d unit vectors (named vector `dense`, cosine,
as vectune's store builds them), upserts them in batches of 1,024, builds the index with
`optimize()` under each (m, ef_construct) asked for, and for each search `hnsw_ef` measures the
per-query latency (p50/p95, one query at a time, warm shard) and recall@10 against exact search
(numpy, the same vectors) on held-out queries drawn from the same clusters.

The synthetic corpus: `--clusters` centres drawn from N(0, I), each point a centre plus N(0, s^2 I)
noise (`--spread`), normalised; queries are drawn the same way and are not in the shard. Random
unclustered vectors are the hardest case for any graph index (STACK-NOTES: recall 0.355 at 50k
with Edge's defaults); real embeddings sit between the two.

    python benchmarks/hnsw.py --sizes 200000 --configs 16:100 16:200 32:200 --efs 0 64 128 256
    python benchmarks/hnsw.py --sizes 50000 --configs 16:100 --efs 0 128 --out /tmp/hnsw.json

`--efs 0` is Edge's default (no `hnsw_ef` in the request). Results: benchmarks/results/hnsw.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

DIM = 384
BATCH = 1024


def corpus(n: int, queries: int, clusters: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM)).astype(np.float32)

    def draw(k: int) -> np.ndarray:
        out = np.empty((k, DIM), dtype=np.float32)
        for start in range(0, k, 50_000):
            m = min(50_000, k - start)
            x = centres[rng.integers(0, clusters, m)] + spread * rng.normal(size=(m, DIM)).astype(np.float32)
            out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return draw(n), draw(queries)


def exact_top(x: np.ndarray, q: np.ndarray, k: int = 10) -> np.ndarray:
    out = np.empty((len(q), k), dtype=np.int64)
    for start in range(0, len(q), 100):
        scores = q[start:start + 100] @ x.T
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
        out[start:start + 100] = np.take_along_axis(part, order, axis=1)
    return out


def measure(x: np.ndarray, q: np.ndarray, truth: np.ndarray, m: int, ef_construct: int, efs: list[int],
            folder: Path) -> dict:
    import qdrant_edge as qe

    shutil.rmtree(folder, ignore_errors=True)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(len(x))]
    back = {s: i for i, s in enumerate(ids)}
    config = qe.EdgeConfig(
        vectors={"dense": qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine)},
        hnsw_config=qe.HnswIndexConfig(m=m, ef_construct=ef_construct, full_scan_threshold=10_000))
    shard = qe.EdgeShard.create(str(folder), config)
    start = time.perf_counter()
    for a in range(0, len(x), BATCH):
        shard.update(qe.UpdateOperation.upsert_points(
            [qe.Point(ids[i], {"dense": x[i].tolist()}) for i in range(a, min(len(x), a + BATCH))]))
    upsert = time.perf_counter() - start
    start = time.perf_counter()
    shard.optimize()
    build = time.perf_counter() - start
    info = shard.info()
    result = {"m": m, "ef_construct": ef_construct, "points": len(x), "upsert_s": round(upsert, 2),
              "optimize_s": round(build, 2), "indexed": info.indexed_vectors_count, "segments": info.segments_count,
              "disk_mib": round(sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file()) / 2**20, 1),
              "search": []}
    for ef in efs:
        params = qe.SearchParams(hnsw_ef=ef) if ef else None
        for v in q[:20]:  # warm the shard's pages
            shard.query(qe.QueryRequest(limit=10, query=qe.Query.Nearest(v.tolist(), using="dense"), params=params))
        lat, hits = [], 0
        for v, want in zip(q, truth):
            t = time.perf_counter()
            got = shard.query(qe.QueryRequest(limit=10, query=qe.Query.Nearest(v.tolist(), using="dense"),
                                              params=params))
            lat.append(time.perf_counter() - t)
            hits += len({back[str(p.id)] for p in got} & set(want.tolist()))
        lat_ms = np.asarray(lat) * 1000
        result["search"].append({"hnsw_ef": ef or "default", "recall@10": round(hits / (10 * len(q)), 4),
                                 "p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
                                 "p95_ms": round(float(np.percentile(lat_ms, 95)), 3)})
        print(json.dumps({"n": len(x), "m": m, "ef_construct": ef_construct, **result["search"][-1]}), flush=True)
    shard.close()
    shutil.rmtree(folder, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000])
    parser.add_argument("--configs", nargs="+", default=["16:100", "16:200", "32:200"],
                        help="m:ef_construct pairs")
    parser.add_argument("--efs", type=int, nargs="+", default=[0, 64, 128, 256])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--spread", type=float, default=2.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=None, help="where the shard is built (default: a temp folder on /dev/shm)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "hnsw.json"))
    args = parser.parse_args()

    import qdrant_edge  # noqa: F401 - fail before generating anything

    from importlib.metadata import version

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = "avx512_bf16" if "avx512_bf16" in flags else "avx2" if "avx2" in flags else platform.machine()
    root = Path(args.dir or tempfile.mkdtemp(prefix="vectune-hnsw-", dir="/dev/shm" if Path("/dev/shm").is_dir()
                                             else None))
    out = {"qdrant_edge": version("qdrant-edge-py"), "cpu_flags": cpu, "cores": __import__("os").cpu_count(),
           "corpus": {"clusters": args.clusters, "spread": args.spread, "queries": args.queries, "dim": DIM},
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": []}
    for n in args.sizes:
        x, q = corpus(n, args.queries, args.clusters, args.spread, args.seed)
        truth = exact_top(x, q)
        for cfg in args.configs:
            m, ef_construct = (int(v) for v in cfg.split(":"))
            out["runs"].append(measure(x, q, truth, m, ef_construct, args.efs, root / f"shard-{n}-{m}-{ef_construct}"))
            Path(args.out).write_text(json.dumps(out, indent=1))
    out["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    Path(args.out).write_text(json.dumps(out, indent=1))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
