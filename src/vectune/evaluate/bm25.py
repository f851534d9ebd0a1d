"""BM25 beside the dense models: Qdrant's own (qdrant-edge's `Bm25`), always measured.

A split's queries rank the whole corpus in a throwaway Edge shard that holds one sparse
vector per document (`bm25`, with the `idf` modifier, so the engine computes IDF over the
corpus as a collection would), exactly the vectors an embedded shard or a Qdrant server
stores for hybrid search. Documents are title, a space and text (`vectune.data.doc_text`,
what the encoders read), streamed from the corpus in bounded batches.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Iterable

from vectune.evaluate.metrics import score_run
from vectune.evaluate.stage import Evaluation
from vectune.ranking import bm25_rank

if TYPE_CHECKING:
    from vectune.data import DomainData
    from vectune.spec import Spec

log = logging.getLogger(__name__)

#: documents read, embedded and upserted at a time (bounds what the driver holds)
BATCH = 1000


def corpus_batches(data: DomainData, size: int = BATCH) -> Iterable[tuple[list[str], list[str]]]:
    """The corpus as (ids, texts) batches of at most `size`, streamed through Ray Data (the
    dataset every stage reads: its `text` is title + text), never collected."""
    return data.text_batches(size)


def evaluate_bm25(spec: Spec, data: DomainData, split: str, *, fingerprint: str) -> Evaluation:
    """BM25's scores on `split`, with the spec's metrics and depth (Ray must be running).

    `fingerprint` names these settings (`scores.bm25_digest`); it stands where a model's
    fingerprint stands in the evaluation.
    """
    start = time.perf_counter()
    labels = data.labels(split)
    qids = sorted(labels.qrels)
    run = bm25_rank(corpus_batches(data), {q: labels.queries[q] for q in qids}, spec.bm25, spec.evaluate.depth)
    means, per_query = score_run(labels.qrels, run, spec.evaluate.metrics)
    seconds = time.perf_counter() - start
    log.info("bm25: %s on %d queries of split %r in %.1f s", ", ".join(f"{m} {v:.4f}" for m, v in means.items()),
             len(qids), split, seconds)
    return Evaluation(split=split, model="bm25", fingerprint=fingerprint, metrics=means, num_queries=len(qids),
                      seconds=seconds, per_query=per_query)


def gains_over(models: dict[str, dict], bm25: dict) -> dict[str, dict[str, float]]:
    """Each model's gain over BM25 on every metric both have (model minus BM25).

    Args:
        models: role -> evaluation summary (`metrics`: name -> value).
        bm25: BM25's evaluation summary on the same split.
    """
    base = bm25["metrics"]
    return {role: {m: v - base[m] for m, v in summary["metrics"].items() if m in base}
            for role, summary in models.items()}
