"""BM25 beside the dense models: Qdrant's own (qdrant-edge's `Bm25`), always measured.

A split's queries rank the whole corpus in a throwaway Edge shard that holds one sparse
vector per document (`bm25`, with the `idf` modifier, so the engine computes IDF over the
corpus as a collection would), exactly the vectors an embedded shard or a Qdrant server
stores for hybrid search. Documents are title, a space and text (`vectune.data.doc_text`,
what the encoders read), streamed from the corpus in bounded batches.
"""

from __future__ import annotations

import logging
import tempfile
import time
from typing import TYPE_CHECKING, Iterable, Sequence

from vectune.evaluate.metrics import score_run
from vectune.evaluate.stage import Evaluation

if TYPE_CHECKING:
    from qdrant_edge import Bm25

    from vectune.data import DomainData
    from vectune.spec import Spec
    from vectune.spec.bm25 import Bm25Spec

log = logging.getLogger(__name__)

#: the sparse vector's name, as a hybrid collection would name it
VECTOR = "bm25"
#: documents read, embedded and upserted at a time (bounds what the driver holds)
BATCH = 1000
#: queries planned together in one `query_batch`
QUERY_BATCH = 256


def engine_version() -> str:
    """The installed qdrant-edge-py: its tokenizer and scoring are part of BM25's identity."""
    from importlib.metadata import version

    return version("qdrant-edge-py")


def bm25_model(settings: Bm25Spec) -> Bm25:
    """Qdrant's BM25 with the spec's settings (the `bm25` section)."""
    import qdrant_edge as qe

    stemmer = (qe.SnowballParams(getattr(qe.SnowballLanguage, settings.language.title()))
               if settings.stemmer == "snowball" else qe.DisabledStemmer())
    stopwords = (getattr(qe.Language, settings.language.title()) if settings.stopwords == "language"
                 else qe.StopwordsSet(languages=set(), custom=set()))
    return qe.Bm25(qe.Bm25Config(
        k=settings.k, b=settings.b, avg_len=settings.avg_len, language=settings.language,
        tokenizer=getattr(qe.TokenizerType, settings.tokenizer.title()), lowercase=settings.lowercase,
        ascii_folding=settings.ascii_folding, stopwords=stopwords, stemmer=stemmer,
        min_token_len=settings.min_token_len, max_token_len=settings.max_token_len))


def rank(documents: Iterable[tuple[Sequence[str], Sequence[str]]], queries: dict[str, str], settings: Bm25Spec,
         k: int) -> dict[str, dict[str, float]]:
    """The top `k` documents of each query by BM25, with their scores.

    Args:
        documents: the corpus as batches of (document ids, texts), each batch upserted as it comes.
        queries: query id -> text.
        settings: the spec's `bm25` section.
        k: how many documents each query keeps.

    Returns:
        query id -> {document id: score}; a query without a term the corpus has (all
        stopwords, say) retrieves nothing.
    """
    import qdrant_edge as qe

    model = bm25_model(settings)
    ids: list[str] = []  # point id -> document id (the ids only, as the corpus check keeps them)
    with tempfile.TemporaryDirectory(prefix="vectune-bm25-") as folder:
        # no write-ahead log: the shard lives for one ranking and is never reopened
        shard = qe.EdgeShard.create(folder, qe.EdgeConfig(
            sparse_vectors={VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}, wal_enabled=False))
        try:
            for doc_ids, texts in documents:
                points = [qe.Point(len(ids) + i, {VECTOR: model.embed_document(text)}) for i, text in enumerate(texts)]
                ids.extend(str(d) for d in doc_ids)
                if points:
                    shard.update(qe.UpdateOperation.upsert_points(points))
            qids = list(queries)
            run: dict[str, dict[str, float]] = {}
            for start in range(0, len(qids), QUERY_BATCH):
                chunk = qids[start:start + QUERY_BATCH]
                requests = [qe.QueryRequest(limit=k, query=qe.Query.Nearest(model.embed_query(queries[q]), using=VECTOR))
                            for q in chunk]
                for qid, hits in zip(chunk, shard.query_batch(qe.QueryBatchRequest(requests))):
                    run[qid] = {ids[hit.id]: float(hit.score) for hit in hits}
        finally:
            shard.close()
    return run


def corpus_batches(data: DomainData, size: int = BATCH) -> Iterable[tuple[list[str], list[str]]]:
    """The corpus as (ids, texts) batches of at most `size`, streamed through Ray Data (the
    dataset every stage reads: its `text` is title + text), never collected."""
    for batch in data.corpus_dataset().iter_batches(batch_format="numpy", batch_size=size):
        yield [str(d) for d in batch["doc_id"]], [str(t) for t in batch["text"]]


def evaluate_bm25(spec: Spec, data: DomainData, split: str, *, fingerprint: str) -> Evaluation:
    """BM25's scores on `split`, with the spec's metrics and depth (Ray must be running).

    `fingerprint` names these settings (`scores.bm25_digest`); it stands where a model's
    fingerprint stands in the evaluation.
    """
    start = time.perf_counter()
    labels = data.labels(split)
    qids = sorted(labels.qrels)
    run = rank(corpus_batches(data), {q: labels.queries[q] for q in qids}, spec.bm25, spec.evaluate.depth)
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
