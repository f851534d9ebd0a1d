"""The evaluate stage: embed the corpus and a split's queries, search exactly, score."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from vectune.cluster import plan_actors
from vectune.data import DomainData
from vectune.embed import encode_texts, encoder_config, embed_dataset
from vectune.embed.pipeline import expects_encoding, finish
from vectune.evaluate.metrics import score_run
from vectune.progress import track
from vectune.search import TopK, search_dataset
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


def corpus_batching(count: int, batch_size: int, actors: int) -> tuple[int, int]:
    """(Ray batch size, read blocks) that give every encoder actor an equal share.

    Ray Data hands an actor whole blocks, gathered until they hold `batch_size` rows, so
    blocks a little smaller than a batch pile up: 4 blocks of 500 with batch 1024 send
    1,500 documents to one actor and 500 to the other. Blocks of at least one batch each,
    in a multiple of the actor count, go one by one to the next free actor.
    """
    per_block = max(1, min(batch_size, math.ceil(count / actors)))
    blocks = math.ceil(math.ceil(count / per_block) / actors) * actors
    # the read splits rows evenly (sizes differ by one at most): every block >= count // blocks
    return max(1, count // blocks), blocks


def embedded_corpus(spec: Spec, data: DomainData, model_path: str, *, batch_size: int, concurrency: int | None,
                    gpus: float = 0.0, keep: tuple[str, ...] = ("doc_id",), cache: bool = True, progress=None):
    """The corpus Dataset with an `embedding` column, and the encoder config used.

    `batch_size` is an upper bound: see `corpus_batching`. `cache=False` skips the
    embedding cache (benchmarks).
    """
    cfg = encoder_config(spec, model_path, role="document", cache=cache)
    plan = plan_actors(concurrency, gpus)
    batch, blocks = corpus_batching(data.corpus.count, batch_size, plan.actors)
    ds = data.corpus_dataset(blocks=blocks)
    return embed_dataset(ds, cfg, batch_size=batch, concurrency=concurrency, gpus=gpus, keep=keep,
                         progress=progress, preload=expects_encoding(cfg, data.corpus.count)), cfg


def retrieve(spec: Spec, data: DomainData, model_path: str, query_ids: list[str], query_texts: list[str],
             k: int) -> TopK:
    """Exact top-k corpus documents for each query under `model_path`."""
    ev = spec.evaluate
    q_cfg = encoder_config(spec, model_path, role="query")
    queries = encode_texts(query_texts, q_cfg)
    with track("encode corpus", data.corpus.count) as counter:
        embedded, d_cfg = embedded_corpus(spec, data, model_path, batch_size=ev.batch_size,
                                          concurrency=ev.concurrency, progress=counter)
        top = search_dataset(embedded, queries, k, block=ev.search_block)
    finish(d_cfg)
    return top


def evaluate_model(spec: Spec, data: DomainData, model_path: str, split: str) -> Evaluation:
    """Score `model_path` on `split` with the spec's metrics (Ray must be running)."""
    start = time.perf_counter()
    labels = data.labels(split)
    qids = sorted(labels.qrels)
    top = retrieve(spec, data, model_path, qids, [labels.queries[q] for q in qids], spec.evaluate.depth)
    means, per_query = score_run(labels.qrels, top.run(qids), spec.evaluate.metrics)
    cfg = encoder_config(spec, model_path, role="query", cache=False)
    return Evaluation(split=split, model=model_path, fingerprint=cfg.fingerprint, metrics=means,
                      num_queries=len(qids), seconds=time.perf_counter() - start, per_query=per_query)
