"""The evaluate stage: embed the corpus and a split's queries, search exactly, score."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from vectune.data import DomainData
from vectune.embed import encode_texts, encoder_config, plan_actors
from vectune.embed.corpus import embedded_corpus
from vectune.embed.dataset import compact_cache
from vectune.evaluate.metrics import score_run
from vectune.precision import resolved
from vectune.progress import track
from vectune.topk import TopK, search_dataset
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

    def summary(self) -> dict:
        return {
            "split": self.split, "model": self.model, "fingerprint": self.fingerprint,
            "metrics": self.metrics, "num_queries": self.num_queries, "seconds": round(self.seconds, 2),
        }


def retrieve(spec: Spec, data: DomainData, model_path: str, query_ids: list[str], query_texts: list[str],
             k: int) -> TopK:
    """Exact top-k corpus documents for each query under `model_path`."""
    ev = spec.evaluate
    q_cfg = encoder_config(spec, model_path, role="query")
    queries = encode_texts(query_texts, q_cfg)
    with track("encode corpus", data.corpus.count) as counter:
        embedded, d_cfg = embedded_corpus(spec, data, model_path, plan_actors(ev.concurrency, ev.num_gpus),
                                          batch_size=ev.batch_size, progress=counter)
        top = search_dataset(embedded, queries, k, block=ev.search_block)
    compact_cache(d_cfg)
    return top


def evaluate_model(spec: Spec, data: DomainData, model_path: str, split: str) -> Evaluation:
    """Score `model_path` on `split` with the spec's metrics (Ray must be running)."""
    start = time.perf_counter()
    spec = resolved(spec)  # `auto` precision decided where the encoding runs (vectune.precision)
    labels = data.labels(split)
    qids = sorted(labels.qrels)
    top = retrieve(spec, data, model_path, qids, [labels.queries[q] for q in qids], spec.evaluate.depth)
    means, per_query = score_run(labels.qrels, top.run(qids), spec.evaluate.metrics)
    cfg = encoder_config(spec, model_path, role="query", cache=False)
    return Evaluation(split=split, model=model_path, fingerprint=cfg.fingerprint, metrics=means,
                      num_queries=len(qids), seconds=time.perf_counter() - start, per_query=per_query)
