"""Exact scores against scores through the served collection (`evaluate.through`), base model.

The gate used to rank every document exactly; it now asks the collection that would serve
(HNSW, and for hybrid the engine's prefetch + fusion). This measures what that changes and
costs on the shipped spec: the base model's nDCG@10 / recall@100 on the evaluate split in
dense and hybrid, ranked exactly and through a scoring collection, BM25 beside them, and the
seconds: the exact evaluation (cold embedding cache: it encodes the corpus), building the
scoring collection from the warm cache, and scoring through it once it exists.

    python benchmarks/through.py                        # SciFact test, the shipped spec
    python benchmarks/through.py --set model.precision=int8 --out benchmarks/results/through_int8.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "specs" / "scifact.yaml"))
    parser.add_argument("--set", dest="sets", action="append", default=[], help="spec overrides, key=value")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "through.json"))
    args = parser.parse_args()

    from vectune.data import DomainData
    from vectune.evaluate.scores import bm25_scored
    from vectune.evaluate.stage import evaluate_model, scored_runs
    from vectune.index.scoring import SCORING, Scorable, rank_through_index
    from vectune.pipeline import resolve_precision
    from vectune.precision import cpu_info
    from vectune.runs import base_model_path
    from vectune.runtime import ray_session
    from vectune.spec import load_spec

    work = Path(tempfile.mkdtemp(prefix="vectune-through-"))
    os.environ["XDG_CACHE_HOME"] = str(work / "xdg")  # int8 variants built here, not in the user's cache
    sets = {k: v for k, v in (s.split("=", 1) for s in args.sets)}
    sets.update({"runtime.runs": str(work / "runs"), "index.qdrant.path": str(work / "qdrant")})
    spec = load_spec(args.spec, sets)
    data = DomainData(spec)
    split = spec.evaluate.split
    labels = data.labels(split)
    qids = sorted(labels.qrels)
    texts = [labels.queries[q] for q in qids]
    out: dict = {"spec": args.spec, "sets": args.sets, "cpu": cpu_info().kind, "split": split,
                 "queries": len(qids), "documents": data.corpus.count}
    with ray_session(spec.runtime):
        spec = resolve_precision(spec, None)
        out["precision"] = spec.model.precision
        path = base_model_path(spec)
        start = time.perf_counter()
        exact = evaluate_model(spec, data, path, split)  # cold: encodes the corpus into the cache
        out["seconds"] = {"exact_cold": round(time.perf_counter() - start, 1)}
        start = time.perf_counter()
        evaluate_model(spec, data, path, split)
        out["seconds"]["exact_warm"] = round(time.perf_counter() - start, 1)
        modes = {}
        for i, mode in enumerate(("hybrid", "dense")):
            start = time.perf_counter()
            ranked = rank_through_index(spec, data, "bench", [Scorable("base", path, mode, SCORING)], qids, texts,
                                        spec.evaluate.depth)["base"]
            took = round(time.perf_counter() - start, 1)
            out["seconds"]["index_build_and_score" if i == 0 else "index_score_reused"] = took
            through = scored_runs(spec, data, path, split, {mode: ranked["run"]}, served=mode, start=0.0,
                                  through="index", collection=ranked["collection"])
            modes[mode] = {"exact": exact.modes[mode]["metrics"], "index": through.metrics,
                           "collection_built_s": ranked["built"]}
        bm25, _ = bm25_scored(spec, data, split)
        modes["bm25"] = {"exact": bm25.metrics}
    out["modes"] = modes
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
