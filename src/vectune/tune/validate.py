"""Score a trial's model on the held-out training queries (never a test split)."""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from vectune.data import DomainData, Labels
from vectune.embed import Encoder, encoder_config
from vectune.errors import StageError
from vectune.evaluate.metrics import score_run
from vectune.spec import Spec


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


class TrainingSubset(DomainData):
    """The spec's data with `labels("train")` cut to some queries: mining never sees the
    validation queries the trials are scored on."""

    def __init__(self, spec: Spec, train: Labels):
        super().__init__(spec)
        self._subset = train

    def labels(self, split: str) -> Labels:
        return self._subset if split == "train" else super().labels(split)


def _top_k(best_s, best_i, scores, ids, k):
    s = np.concatenate([best_s, scores], axis=1)
    i = np.concatenate([best_i, np.broadcast_to(ids, scores.shape)], axis=1)
    keep = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, keep, 1), np.take_along_axis(i, keep, 1)


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
    best_s = np.full((len(qids), 0), -np.inf, dtype=np.float32)
    best_i = np.empty((len(qids), 0), dtype=object)
    for batch in data.corpus_dataset().iter_batches(batch_size=spec.evaluate.batch_size, batch_format="numpy"):
        vectors = docs.encode([str(t) for t in batch["text"]])
        ids = np.asarray([str(d) for d in batch["doc_id"]], dtype=object)
        best_s, best_i = _top_k(best_s, best_i, queries @ vectors.T, ids, k)
    run = {q: {str(d): float(s) for d, s in zip(best_i[n], best_s[n])} for n, q in enumerate(qids)}
    means, _ = score_run(labels.qrels, run, spec.evaluate.metrics)
    return means
