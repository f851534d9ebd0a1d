"""The evaluate stage: embed the corpus and a split's queries, rank exactly in every served
mode (dense, and hybrid: dense fused with Qdrant's BM25 by the engine, `vectune.ranking`),
score. An evaluation's `metrics` are those of the mode the spec serves (`search.mode`);
`modes` holds every mode's."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from vectune.data import DomainData
from vectune.embed import encode_texts, encoder_config, plan_actors
from vectune.embed.corpus import embedded_corpus
from vectune.embed.dataset import compact_cache
from vectune.evaluate.metrics import score_run
from vectune.precision import resolved
from vectune.progress import track
from vectune.spec import Spec

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Metrics of one model on one split."""

    split: str
    model: str
    fingerprint: str
    metrics: dict[str, float]
    num_queries: int
    seconds: float
    per_query: dict[str, dict[str, float]] = field(repr=False, default_factory=dict)
    mode: str = "dense"  # the mode `metrics` and `per_query` are of
    #: every mode ranked: mode -> {"metrics": ..., "per_query": ...}
    modes: dict[str, dict] = field(repr=False, default_factory=dict)
    #: how it was ranked: `exact` (every document scored) or `index` (through `collection`, as served)
    through: str = "exact"
    collection: str | None = None

    def summary(self) -> dict:
        out = {
            "split": self.split, "model": self.model, "fingerprint": self.fingerprint,
            "metrics": self.metrics, "num_queries": self.num_queries, "seconds": round(self.seconds, 2),
            "through": self.through,
        }
        if self.collection:
            out["collection"] = self.collection
        if self.modes:
            out["mode"] = self.mode
            out["modes"] = {m: v["metrics"] for m, v in self.modes.items()}
        return out

    def in_mode(self, mode: str) -> "Evaluation":
        """The same evaluation with `metrics` and `per_query` of another mode."""
        if mode == self.mode or mode not in self.modes:
            if mode != self.mode:
                raise KeyError(f"{self.model} was not ranked in mode {mode!r} (ranked: {sorted(self.modes)})")
            return self
        m = self.modes[mode]
        return Evaluation(split=self.split, model=self.model, fingerprint=self.fingerprint, metrics=m["metrics"],
                          num_queries=self.num_queries, seconds=self.seconds, per_query=m["per_query"], mode=mode,
                          modes=self.modes, through=self.through, collection=self.collection)


#: documents added to the scratch shard at a time (bounds what the driver holds)
SHARD_BATCH = 1000


def rank_modes(spec: Spec, data: DomainData, model_path: str, query_ids: list[str], query_texts: list[str],
               k: int) -> dict[str, dict[str, dict[str, float]]]:
    """Exact top-k of each query under `model_path` in the modes a collection serves: `dense`
    and `hybrid` (the spec's `search` fusion of dense and Qdrant's BM25), run -> mode.

    The corpus streams once through the encoder actors into a scratch Edge shard holding each
    document's dense and BM25 vectors (`vectune.ranking`), which answers every mode exactly.
    """
    from vectune.ranking import ScratchShard, bm25_vectors

    ev, sr = spec.evaluate, spec.search
    q_cfg = encoder_config(spec, model_path, role="query")
    queries = encode_texts(query_texts, q_cfg)
    q_sparse = bm25_vectors(spec.bm25, query_texts, query=True)
    with track("encode corpus", data.corpus.count) as counter, ScratchShard(queries.shape[1], True) as shard:
        embedded, d_cfg = embedded_corpus(spec, data, model_path, plan_actors(ev.concurrency, ev.num_gpus),
                                          batch_size=ev.batch_size, keep=("doc_id", "text"), progress=counter)
        for batch in embedded.iter_batches(batch_size=SHARD_BATCH, batch_format="numpy"):
            texts = [str(t) for t in batch["text"]]
            shard.add([str(d) for d in batch["doc_id"]], np.asarray(batch["embedding"], dtype=np.float32),
                      bm25_vectors(spec.bm25, texts))
        runs = {mode: dict(zip(query_ids, shard.query(k, mode, dense=queries, sparse=q_sparse, fusion=sr.fusion,
                                                       rrf_k=sr.rrf_k, prefetch=sr.prefetch)))
                for mode in ("dense", "hybrid")}
    compact_cache(d_cfg)
    return runs


def evaluate_model(spec: Spec, data: DomainData, model_path: str, split: str) -> Evaluation:
    """Score `model_path` on `split` with the spec's metrics in every served mode, ranked exactly
    (Ray must be running); `metrics` are the spec's `search.mode`'s."""
    start = time.perf_counter()
    spec = resolved(spec, train=False)  # `auto` precision decided where the encoding runs (vectune.precision)
    labels = data.labels(split)
    qids = sorted(labels.qrels)
    runs = rank_modes(spec, data, model_path, qids, [labels.queries[q] for q in qids], spec.evaluate.depth)
    return scored_runs(spec, data, model_path, split, runs, served=spec.search.mode, start=start)


def scored_runs(spec: Spec, data: DomainData, model_path: str, split: str, runs: dict[str, dict], *, served: str,
                start: float, through: str = "exact", collection: str | None = None) -> Evaluation:
    """The evaluation of `model_path` from its rankings of `split`'s queries, mode -> run;
    `metrics` are those of `served`. `through`: how they were ranked (`exact`, or `index`:
    through `collection`, as served)."""
    labels = data.labels(split)
    modes = {}
    for mode, run in runs.items():
        means, per_query = score_run(labels.qrels, run, spec.evaluate.metrics)
        modes[mode] = {"metrics": means, "per_query": per_query}
    log.info("%s on %s%s: %s", model_path, split, f" through {collection}" if collection else "", "; ".join(
        f"{m} " + ", ".join(f"{k} {v:.4f}" for k, v in modes[m]["metrics"].items()) for m in modes))
    cfg = encoder_config(spec, model_path, role="query", cache=False)
    return Evaluation(split=split, model=model_path, fingerprint=cfg.fingerprint, metrics=modes[served]["metrics"],
                      num_queries=len(labels.qrels), seconds=time.perf_counter() - start,
                      per_query=modes[served]["per_query"], mode=served, modes=modes, through=through,
                      collection=collection)
