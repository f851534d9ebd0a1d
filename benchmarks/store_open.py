"""What the embedded Qdrant engine costs a sync before any work: opening its store, and the
scrolls a sync makes.

`vectune reindex` with nothing changed (issue 16) checks the corpus file, opens the store, counts
the live collection and scrolls its ids. On the embedded engine (`index.qdrant.path`), opening a
store loads every point of every collection in the folder into memory. This script builds such
a store the way `reindex.py --phases sync` leaves it (collections of `--points` points each,
384-d vectors, the payload fields a sync reads), then times, in a fresh process each:

- `open`: `QdrantClient(path=...)` (vectune's own `connect` adds the WAL setting only);
- `count`: an exact count of one collection;
- `scroll_ids`: every point id of one collection, 10,000 a page (the verification's scroll);
- `scroll_hashes`: ids with `doc_id` and `text_hash` (the diff's scroll).

    python benchmarks/store_open.py --points 50000 --collections 2 --out benchmarks/results/store_open.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIM = 384
PAGE = 10_000


def build(path: Path, points: int, collections: int) -> float:
    import numpy as np
    from qdrant_client import QdrantClient, models

    start = time.perf_counter()
    client = QdrantClient(path=str(path))
    rng = np.random.default_rng(0)
    for c in range(collections):
        name = f"bench__c{c}"
        client.create_collection(name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
        for lo in range(0, points, 1000):
            hi = min(points, lo + 1000)
            vectors = rng.standard_normal((hi - lo, DIM), dtype=np.float32)
            client.upsert(name, points=models.Batch(
                ids=[str(uuid.uuid5(uuid.NAMESPACE_URL, f"s{i}")) for i in range(lo, hi)], vectors=vectors.tolist(),
                payloads=[{"doc_id": f"s{i}", "text_hash": f"{i:016x}"} for i in range(lo, hi)]), wait=True)
    client.close()
    return time.perf_counter() - start


def measure(path: str) -> dict:
    """Child process: one open of the store, then the count and the two scrolls."""
    from qdrant_client import QdrantClient

    out = {}
    start = time.perf_counter()
    client = QdrantClient(path=path)
    out["open"] = time.perf_counter() - start
    start = time.perf_counter()
    n = client.count("bench__c0", exact=True).count
    out["count"] = time.perf_counter() - start
    for key, payload in (("scroll_ids", False), ("scroll_hashes", ["doc_id", "text_hash"])):
        start = time.perf_counter()
        offset, seen = None, 0
        while True:
            page, offset = client.scroll("bench__c0", limit=PAGE, offset=offset, with_payload=payload,
                                         with_vectors=False)
            seen += len(page)
            if offset is None:
                break
        out[key] = time.perf_counter() - start
        assert seen == n, (seen, n)
    client.close()
    return {k: round(v, 3) for k, v in out.items()} | {"points": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=50_000, help="Points per collection.")
    ap.add_argument("--collections", type=int, default=2, help="Collections in the store (the sync's and the full side's).")
    ap.add_argument("--repeat", type=int, default=3, help="Fresh processes that open the store; each is reported.")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "store_open.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    where = "/dev/shm" if Path("/dev/shm").is_dir() else None
    work = Path(tempfile.mkdtemp(prefix="vectune-store-open-", dir=where))
    try:
        built = build(work / "qdrant", args.points, args.collections)
        runs = [json.loads(subprocess.run([sys.executable, __file__, "--child", str(work / "qdrant")], check=True,
                                          capture_output=True, text=True).stdout.strip().splitlines()[-1])
                for _ in range(args.repeat)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {k: min(r[k] for r in runs) for k in ("open", "count", "scroll_ids", "scroll_hashes")}
    result = {"benchmark": "store_open", "host": platform.node(), "cpus": os.cpu_count(),
              "load_average": [round(x, 2) for x in os.getloadavg()], "points_per_collection": args.points,
              "collections": args.collections, "build_seconds": round(built, 1), "runs": runs, "best": best}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
