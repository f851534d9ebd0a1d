"""Every way to serve a finished run's models, on its validation queries over the whole corpus.

The `search` section (dense, or hybrid fused by RRF or DBSF) is chosen on validation, never on
a test split. A run's own validation compares the ways of serving on its validation documents
(`train.validation_docs`, a sample above that size); this script ranks the *whole* corpus for
the run's held-out training queries (`train/plan.json`), exactly, in a scratch Qdrant Edge
shard (`vectune.ranking`), for the base model and the run's tuned model, beside BM25 alone.
`--split test` scores the evaluate split the same way: to report after a choice, not to make it.

Document vectors come from the run's embedding cache when it holds them (mine and the candidate
collection filled it), else they are encoded here.

    python benchmarks/serving.py --run runs/scifact/<id>                    # the choice
    python benchmarks/serving.py --run runs/scifact/<id> --split test       # reported after
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


def _document_vectors(spec, path: str, texts: list[str]):
    """Unit vectors of the documents under `path`, from the embedding cache where it has them."""
    import numpy as np

    from vectune.embed.cache import EmbeddingCache, text_hashes
    from vectune.embed.encoder import encoder_config
    from vectune.embed.models import load_model

    config = encoder_config(spec, path, role="document")
    hashed = [config.prefix + t for t in texts]
    found, cached = (EmbeddingCache(config.cache_dir).lookup(text_hashes(hashed)) if config.cache_dir
                     else (np.zeros(len(texts), dtype=bool), None))
    out = np.zeros((len(texts), 0), dtype=np.float32) if cached is None else None
    missing = np.flatnonzero(~found)
    if len(missing):
        model = load_model(path, max_seq_length=spec.model.max_seq_length, device="cpu")
        fresh = model.encode([hashed[i] for i in missing], batch_size=spec.model.batch_size,
                             normalize_embeddings=True, show_progress_bar=False)
        out = np.zeros((len(texts), fresh.shape[1]), dtype=np.float32)
        out[missing] = fresh
    else:
        out = np.zeros((len(texts), cached.shape[1]), dtype=np.float32)
    if found.any():
        out[found] = cached
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12), int(found.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished run's folder (train/plan.json, model/)")
    parser.add_argument("--spec", default=str(ROOT / "specs" / "scifact.yaml"))
    parser.add_argument("--set", dest="sets", action="append", default=[], help="spec overrides, key=value")
    parser.add_argument("--split", default="validation", help="validation (the held-out training queries) "
                                                               "or an evaluate split, to report")
    parser.add_argument("--out", default=None, help="JSON (default benchmarks/results/serving_<split>.json)")
    args = parser.parse_args()

    from vectune.data import DomainData
    from vectune.evaluate.metrics import score_run
    from vectune.precision import cpu_info
    from vectune.ranking import ScratchShard, bm25_vectors
    from vectune.runs import base_model_path
    from vectune.spec import load_spec
    from vectune.train.validation import served_modes

    run = Path(args.run).resolve()
    spec = load_spec(args.spec, dict(s.split("=", 1) for s in args.sets))
    data = DomainData(spec)
    if args.split == "validation":
        held = set(json.loads((run / "train" / "plan.json").read_text())["held"])
        labels = data.labels("train")
        qrels = {q: r for q, r in labels.qrels.items() if q in held}
    else:
        labels = data.labels(args.split)
        qrels = labels.qrels
    qids = sorted(qrels)
    ids = sorted(data.corpus.ids)
    texts = data.documents(set(ids))
    docs = [texts[d] for d in ids]
    metrics = list(dict.fromkeys([spec.evaluate.gate.metric, *spec.evaluate.metrics]))
    k = max(int(m.split("@")[1]) for m in metrics)
    search = spec.search
    started = time.perf_counter()
    sparse_docs = bm25_vectors(spec.bm25, docs)
    sparse_queries = bm25_vectors(spec.bm25, [labels.queries[q] for q in qids], query=True)
    out: dict = {"run": str(run), "split": args.split, "queries": len(qids), "documents": len(ids),
                 "cpu": cpu_info().kind, "served": "dense" if search.mode == "dense" else f"hybrid/{search.fusion}",
                 "models": {}}
    from vectune.embed.models import load_model

    for role, path in (("base", base_model_path(spec)), ("tuned", str(run / "model"))):
        vectors, cached = _document_vectors(spec, path, docs)
        model = load_model(path, max_seq_length=spec.model.max_seq_length, device="cpu")
        queries = model.encode([spec.model.query_prefix + labels.queries[q] for q in qids], normalize_embeddings=True,
                               batch_size=spec.model.batch_size, show_progress_bar=False)
        scores = {}
        with ScratchShard(vectors.shape[1], True) as shard:
            shard.add(ids, vectors, sparse_docs)
            for mode in (*served_modes(), *(("bm25",) if role == "base" else ())):
                plain, _, fusion = mode.partition("/")
                ranked = shard.query(k, plain, dense=queries, sparse=sparse_queries, fusion=fusion or search.fusion,
                                     rrf_k=search.rrf_k, prefetch=search.prefetch)
                means, _ = score_run(qrels, dict(zip(qids, ranked)), metrics)
                scores[mode] = {m: round(float(v), 6) for m, v in means.items()}
        if "bm25" in scores:
            out["bm25"] = scores.pop("bm25")
        out["models"][role] = {"path": path, "cached_vectors": cached, "modes": scores}
        print(role, {m: v[metrics[0]] for m, v in scores.items()}, flush=True)
    out["seconds"] = round(time.perf_counter() - started, 1)
    print("bm25", out["bm25"][metrics[0]])
    target = Path(args.out or ROOT / "benchmarks" / "results" / f"serving_{args.split}.json")
    target.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
