"""Score a trial's model on the held-out training queries (never a test split)."""

from __future__ import annotations

import dataclasses
import random

from vectune.data import DomainData, Labels
from vectune.embed import Encoder, encoder_config
from vectune.errors import StageError
from vectune.evaluate.metrics import score_run
from vectune.spec import Spec
from vectune.topk import block_topk, merge_topk


def carve(labels: Labels, n: int, seed: int) -> tuple[Labels, Labels]:
    """Split training labels into (validation, rest): `n` queries sampled with `seed`."""
    qids = sorted(labels.qrels)
    if n >= len(qids):
        raise StageError(f"tune.validation_queries ({n}) must be below the number of training queries "
                         f"({len(qids)}): nothing would be left to train on")
    held = set(random.Random(seed).sample(qids, n))

    def part(keep) -> Labels:
        ids = [q for q in qids if keep(q)]
        return Labels(qrels={q: labels.qrels[q] for q in ids}, queries={q: labels.queries[q] for q in ids},
                      shown={q: labels.shown[q] for q in ids if q in labels.shown},
                      related={q: labels.related[q] for q in ids if q in labels.related})

    return part(lambda q: q in held), part(lambda q: q not in held)


def validation_metrics(spec: Spec, data: DomainData, model_path: str, labels: Labels, threads: int) -> dict:
    """Mean metrics (`spec.evaluate.metrics`) of `model_path` over `labels`, against the whole corpus.

    Encodes in this process with `threads` torch threads rather than through an encoder
    actor pool: a trial already holds CPUs, and a pool sized to the cluster would wait for
    them (the Ray Data hang the stages guard against). No embedding cache: each trial's
    model is new, its vectors are never read again.
    """
    qids = sorted(labels.qrels)
    q_cfg = dataclasses.replace(encoder_config(spec, model_path, role="query", cache=False), threads=threads)
    d_cfg = dataclasses.replace(encoder_config(spec, model_path, role="document", cache=False), threads=threads)
    queries = Encoder(q_cfg).encode([labels.queries[q] for q in qids])
    docs = Encoder(d_cfg)
    k = spec.evaluate.depth

    def partials():
        for batch in data.corpus_dataset().iter_batches(batch_size=spec.evaluate.batch_size, batch_format="numpy"):
            vectors = docs.encode([str(t) for t in batch["text"]])
            yield block_topk(queries, vectors, [str(d) for d in batch["doc_id"]], k)

    top = merge_topk(partials(), len(qids), k)
    means, _ = score_run(labels.qrels, top.run(qids), spec.evaluate.metrics)
    return means
