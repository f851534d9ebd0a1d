"""Ranking queries the way a Qdrant collection serves them, in a throwaway Qdrant Edge shard.

Validation (inside the trainer) and the exact evaluation rank a set of documents for a set of
queries in one of the served modes (the `search` section): `dense` (the model's vectors,
cosine), `bm25` (Qdrant's BM25 sparse vectors with the `idf` modifier, so the engine computes
IDF over the documents held) or `hybrid` (both, fused by the engine with Qdrant's Query API:
two `Prefetch`es and `Fusion.Rrf` or `Fusion.Dbsf`). The shard is Qdrant's own engine,
in-process, in a temporary folder, without a write-ahead log and without an HNSW index (a
plain segment searches exactly), so a score here is the served mode's, free of approximate
search; `evaluate.through: index` scores the built collection itself.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:
    import qdrant_edge

DENSE = "dense"
SPARSE = "bm25"
MODES = ("dense", "bm25", "hybrid")
#: how hybrid fuses its dense and BM25 candidates: the Query API's RRF or DBSF
FUSIONS = ("rrf", "dbsf")
#: queries planned together in one `query_batch`
QUERY_BATCH = 256

#: a sparse vector as plain lists (picklable, for Ray): (indices, values)
SparseLists = tuple[list[int], list[float]]


def engine_version() -> str:
    """The installed qdrant-edge-py: its tokenizer and scoring are part of BM25's identity."""
    from importlib.metadata import version

    return version("qdrant-edge-py")


def bm25_model(settings) -> "qdrant_edge.Bm25":
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


def bm25_vectors(settings, texts: Sequence[str], *, query: bool = False) -> list[SparseLists]:
    """Qdrant's BM25 vectors of `texts` (documents, or queries with `query=True`) under the
    spec's `bm25` section, as plain lists."""
    model = bm25_model(settings)
    embed = model.embed_query if query else model.embed_document
    out = []
    for text in texts:
        v = embed(text)
        out.append((list(v.indices), list(v.values)))
    return out


def bm25_rank(documents: Iterable[tuple[Sequence[str], Sequence[str]]], queries: dict[str, str], settings,
              k: int) -> dict[str, dict[str, float]]:
    """The top `k` documents of each query by Qdrant's BM25, with their scores.

    Args:
        documents: the corpus as batches of (document ids, texts), each batch upserted as it comes.
        queries: query id -> text.
        settings: the spec's `bm25` section.
        k: how many documents each query keeps.

    Returns:
        query id -> {document id: score}, best first; a query without a term the corpus has
        (all stopwords, say) retrieves nothing.
    """
    qids = list(queries)
    with ScratchShard(None, True) as shard:  # the ids only are kept, as the corpus check keeps them
        for doc_ids, texts in documents:
            shard.add(doc_ids, sparse=bm25_vectors(settings, texts))
        ranked = shard.query(k, "bm25", sparse=bm25_vectors(settings, [queries[q] for q in qids], query=True))
    return dict(zip(qids, ranked))


def fuse(lists: Sequence[Sequence[tuple[str, float]]], fusion: str, *, limit: int,
         rrf_k: int = 60) -> list[tuple[str, float]]:
    """Ranked candidate lists (each best first, as a prefetch returns them) fused the way the
    Query API fuses prefetches: `rrf` or `dbsf`, computed by qdrant-client's own fusion (what its
    local mode serves), for lists that did not come out of one collection (the mine's exact
    dense search beside a BM25 ranking). Returns (document id, fused score), best first."""
    from qdrant_client.http import models
    from qdrant_client.hybrid.fusion import distribution_based_score_fusion, reciprocal_rank_fusion

    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; one of {FUSIONS}")
    names: dict[str, int] = {}
    responses = [[models.ScoredPoint(id=names.setdefault(str(doc), len(names)), version=0, score=float(score))
                  for doc, score in hits] for hits in lists]
    fused = (reciprocal_rank_fusion(responses, limit, ranking_constant_k=rrf_k) if fusion == "rrf"
             else distribution_based_score_fusion(responses, limit))
    back = list(names)
    return [(back[p.id], float(p.score)) for p in fused]


def needs(mode: str) -> tuple[bool, bool]:
    """(dense vectors needed, BM25 vectors needed) for a mode."""
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}; one of {MODES}")
    return mode != "bm25", mode != "dense"


class ScratchShard:
    """A temporary Edge shard holding documents' dense and/or BM25 vectors, queried in a mode.

    Documents are added in batches (`add`), so a caller can stream a corpus through it;
    point ids are the order of arrival, mapped back to document ids on the way out.
    """

    def __init__(self, dimension: int | None, sparse: bool):
        import qdrant_edge as qe

        self._folder = tempfile.mkdtemp(prefix="vectune-rank-")
        vectors = {DENSE: qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)} if dimension else None
        sparse_vectors = {SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)} if sparse else None
        self._shard = qe.EdgeShard.create(self._folder, qe.EdgeConfig(vectors=vectors, sparse_vectors=sparse_vectors,
                                                                      wal_enabled=False))
        self.ids: list[str] = []
        self.dense, self.sparse = bool(dimension), sparse

    def add(self, ids: Sequence[str], dense: np.ndarray | None = None,
            sparse: Sequence[SparseLists] | None = None) -> None:
        import qdrant_edge as qe

        if self.dense and dense is None or self.sparse and sparse is None:
            raise ValueError("every document needs the vectors the shard holds")
        points = []
        for i, doc_id in enumerate(ids):
            vector = {}
            if self.dense:
                vector[DENSE] = np.asarray(dense[i], dtype=np.float32).tolist()
            if self.sparse:
                vector[SPARSE] = qe.SparseVector(*sparse[i])
            points.append(qe.Point(len(self.ids) + i, vector))
        self.ids.extend(str(d) for d in ids)
        if points:
            self._shard.update(qe.UpdateOperation.upsert_points(points))

    def query(self, k: int, mode: str, *, dense: np.ndarray | None = None, sparse: Sequence[SparseLists] | None = None,
              fusion: str = "rrf", rrf_k: int = 60, prefetch: int = 100) -> list[dict[str, float]]:
        """The top `k` documents of each query ({document id: score}), in `mode`."""
        import qdrant_edge as qe

        want_dense, want_sparse = needs(mode)
        if want_dense and (dense is None or not self.dense) or want_sparse and (sparse is None or not self.sparse):
            raise ValueError(f"mode {mode!r} needs the vectors of both the queries and the documents")
        n = len(dense) if dense is not None else len(sparse)

        def nearest(i: int, using: str):
            v = np.asarray(dense[i], dtype=np.float32).tolist() if using == DENSE else qe.SparseVector(*sparse[i])
            return qe.Query.Nearest(v, using=using)

        def request(i: int):
            if mode == "dense":
                return qe.QueryRequest(limit=k, query=nearest(i, DENSE))
            if mode == "bm25":
                return qe.QueryRequest(limit=k, query=nearest(i, SPARSE))
            how = qe.Fusion.Rrf(k=rrf_k) if fusion == "rrf" else qe.Fusion.Dbsf()
            depth = max(prefetch, k)
            return qe.QueryRequest(limit=k, query=how, prefetches=[
                qe.Prefetch(limit=depth, query=nearest(i, DENSE)), qe.Prefetch(limit=depth, query=nearest(i, SPARSE))])

        out: list[dict[str, float]] = []
        for start in range(0, n, QUERY_BATCH):
            batch = [request(i) for i in range(start, min(n, start + QUERY_BATCH))]
            for hits in self._shard.query_batch(qe.QueryBatchRequest(batch)):
                out.append({self.ids[h.id]: float(h.score) for h in hits})
        return out

    def close(self) -> None:
        try:
            self._shard.close()
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> "ScratchShard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
