"""Candidates: the corpus searched for every query, and exact scores for chosen pairs.

Search runs on Ray Data: the shared encoder pool (`embedded_corpus`) embeds the corpus
through the embedding cache, and `search_dataset` keeps each block's top-k in Ray tasks.
When the cache already holds every document (a probe pass says so), the encoder pool is
skipped: tasks read the vectors straight from the cache, so a warm mine starts no actors.

Search scores depend on how documents were grouped into blocks (BLAS rounds a matrix
product by its shape), and Ray Data groups them differently from run to run. So every
score the choice uses is recomputed here, one (query, document) pair at a time from the
cached vectors: the same pair gets the same score in every run, warm or cold.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from vectune.embed import EmbeddingCache, EncoderConfig, compact_cache, encoder_config, plan_actors
from vectune.embed.cache import store_stamp, text_hashes
from vectune.embed.corpus import embedded_corpus
from vectune.progress import track
from vectune.topk import TopK, search_dataset

_CACHES: dict = {}  # per worker process: the cache store last read, by folder and stamp


def _open_cache(folder: str) -> EmbeddingCache:
    stamp = store_stamp(folder)
    pending = len(list((Path(folder) / "pending").glob("*.npz")))
    key = (folder, stamp, pending)
    if key not in _CACHES:
        _CACHES.clear()
        _CACHES[key] = EmbeddingCache(folder)
    return _CACHES[key]


def _probe(batch: dict, folder: str, prefix: str) -> dict:
    """Ray Data UDF: how many of this batch's texts the cache lacks."""
    cache = _open_cache(folder)
    found, _ = cache.lookup(text_hashes([prefix + str(t) for t in batch["text"]]))
    return {"missing": np.asarray([int((~found).sum())])}


def _from_cache(batch: dict, folder: str, prefix: str) -> dict:
    """Ray Data UDF: doc_id and embedding, read from the cache (the probe found them all)."""
    cache = _open_cache(folder)
    found, vectors = cache.lookup(text_hashes([prefix + str(t) for t in batch["text"]]))
    if not found.all():  # the cache changed since the probe: fail loudly, never search a partial corpus
        raise RuntimeError(f"{int((~found).sum())} document(s) left the embedding cache during the search")
    return {"doc_id": batch["doc_id"], "embedding": vectors}


def search_corpus(spec, data, model_path: str, queries: np.ndarray, k: int) -> tuple[TopK, EncoderConfig, str]:
    """Exact top-k of the corpus for each query vector.

    Returns:
        The ranking, the document encoder config, and how the corpus was embedded
        (`cache`: read from the embedding cache by tasks; `encoder`: the actor pool).
    """
    m = spec.mine
    cfg = encoder_config(spec, model_path, role="document")
    blocks = max(2, math.ceil(data.corpus.count / m.batch_size))
    # the probe costs a light pass: skip it when the cache is plainly too small to hold the
    # corpus (it may hold queries and other corpora too, hence a probe and not a count)
    if cfg.cache_dir and len(EmbeddingCache(cfg.cache_dir)) >= 0.9 * data.corpus.count:
        args = {"folder": cfg.cache_dir, "prefix": cfg.prefix}
        probe = data.corpus_dataset(blocks=blocks).map_batches(
            _probe, fn_kwargs=args, batch_size=m.batch_size, batch_format="numpy", num_cpus=0.1)
        missing = sum(int(b["missing"].sum()) for b in probe.iter_batches(batch_size=None, batch_format="numpy"))
        if missing == 0:
            ds = data.corpus_dataset(blocks=blocks).map_batches(
                _from_cache, fn_kwargs=args, batch_size=m.batch_size, batch_format="numpy", num_cpus=0.1)
            return search_dataset(ds, queries, k, block=m.batch_size), cfg, "cache"
    with track("encode corpus", data.corpus.count) as counter:
        embedded, cfg = embedded_corpus(spec, data, model_path, plan_actors(m.concurrency, m.num_gpus), batch_size=m.batch_size,
                                        progress=counter)
        top = search_dataset(embedded, queries, k, block=m.batch_size)
    compact_cache(cfg)
    return top, cfg, "encoder"


def pair_scores(query: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Dot products of one query with each row, row by row (no matrix product whose
    rounding would depend on how many rows come along)."""
    return np.einsum("ij,j->i", np.asarray(vectors, dtype=np.float32), query.astype(np.float32),
                     dtype=np.float32, optimize=False)


class ExactScorer:
    """Scores (query, document) pairs from the cached vectors, by each document's cache key."""

    def __init__(self, cfg: EncoderConfig, queries: np.ndarray):
        self.cache = EmbeddingCache(cfg.cache_dir) if cfg.cache_dir else None
        self.queries = queries

    @property
    def enabled(self) -> bool:
        return self.cache is not None

    def scores(self, qi: int, vkeys: list[int]) -> np.ndarray | None:
        """Scores of query `qi` against documents given by cache key; None if any is uncached."""
        if not vkeys:
            return np.zeros(0, dtype=np.float32)
        found, vectors = self.cache.lookup(np.asarray(vkeys, dtype=np.uint64))
        if not found.all():
            return None
        return pair_scores(self.queries[qi], vectors)
