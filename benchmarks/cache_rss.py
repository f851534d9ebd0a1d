"""The embedding cache's reader memory: a full pass of lookups over N cached vectors (what an
encoder actor does in a cached re-index), its peak RSS with the vectors read by `pread`
(`vectune.embed.cache`, now) against a memory map of the same file (the reader before), side by
side in one run, each arm in a fresh process.

    python benchmarks/cache_rss.py --n 1000000 --dir /work/prof/cache_rss
    python benchmarks/cache_rss.py --n 20000 --out /tmp/cache_rss.json        # a smoke run

For each arm: the process's RSS after opening the cache (its index: 16 bytes a vector), the peak
RSS over the pass (`VmHWM`), seconds, and a checksum of every vector read (the two arms must
agree). Results: benchmarks/results/cache_rss.json, with the CPU's flags.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DIM = 384


def _status(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def build(root: Path, n: int, chunk: int = 50_000) -> None:
    """A compacted cache of `n` random unit vectors keyed by the hashes of `doc {i}`."""
    from vectune.embed.cache import EmbeddingCache, text_hashes

    if (root / "store" / "index.bin").exists() and len(EmbeddingCache(root)) == n:
        return
    cache = EmbeddingCache(root)
    rng = np.random.default_rng(0)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        v = rng.normal(size=(stop - start, DIM)).astype(np.float32)
        cache.add(text_hashes([f"doc {i}" for i in range(start, stop)]), v / np.linalg.norm(v, axis=1, keepdims=True))
        cache.compact()


def one_pass(root: Path, n: int, arm: str, batch: int) -> dict:
    """Look every vector up, a batch at a time in corpus order (child process)."""
    from vectune.embed.cache import EmbeddingCache, text_hashes

    start = time.perf_counter()
    cache = EmbeddingCache(root)
    if arm == "mmap":  # the reader before: the whole file mapped, rows taken by fancy indexing
        count, dim = cache._vectors.shape
        cache._vectors = np.memmap(cache._vectors.path, dtype=np.float32, mode="r", shape=(count, dim))
    opened = _status("VmRSS")
    total, found = 0.0, 0
    for lo in range(0, n, batch):
        hit, vectors = cache.lookup(text_hashes([f"doc {i}" for i in range(lo, min(n, lo + batch))]))
        found += int(hit.sum())
        total += float(vectors.sum(dtype=np.float64))
    return {"arm": arm, "found": found, "checksum": round(total, 3), "seconds": round(time.perf_counter() - start, 2),
            "rss_after_open_mib": round(opened, 1), "peak_rss_mib": round(_status("VmHWM"), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1024, help="texts per lookup (index.embed_batch_size)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vectune-cache-rss"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cache_rss.json")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    args = ap.parse_args()
    root = args.dir / f"cache-{args.n}"
    if args.arm:
        print(json.dumps(one_pass(root, args.n, args.arm, args.batch)))
        return 0
    t = time.perf_counter()
    build(root, args.n)
    built = round(time.perf_counter() - t, 1)
    flags = sorted(set(Path("/proc/cpuinfo").read_text().split()) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    arms = []
    for arm in ("pread", "mmap", "pread"):  # the new reader on both sides of the old one
        subprocess.run(["sync"], check=False)
        proc = subprocess.run([sys.executable, __file__, "--n", str(args.n), "--batch", str(args.batch),
                               "--dir", str(args.dir), "--arm", arm], capture_output=True, text=True, check=True)
        arms.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(arms[-1], flush=True)
    assert len({a["checksum"] for a in arms}) == 1 and all(a["found"] == args.n for a in arms), arms
    result = {"n": args.n, "dim": DIM, "batch": args.batch, "file_mib": round(args.n * DIM * 4 / 2**20, 1),
              "build_seconds": built, "cpu_flags": flags, "cores": os.cpu_count(),
              "when": time.strftime("%Y-%m-%d %H:%M:%S"), "arms": arms}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
