"""Exact top-k search over an embedded corpus, blockwise, in Ray workers.

Each corpus block is scored against every query on a worker, which keeps its local
top-k; the driver merges those partial lists as they stream in. Memory on the driver
is queries x k, whatever the corpus size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TopK:
    """Top-k results: `ids[i]` and `scores[i]` for query i, best first."""

    ids: np.ndarray  # object array (nq, k) of doc ids ("" where fewer than k docs)
    scores: np.ndarray  # float32 (nq, k), -inf where fewer than k docs

    def run(self, query_ids: list[str]) -> dict[str, dict[str, float]]:
        """As a TREC-style run {qid: {docid: score}} for metric libraries."""
        out: dict[str, dict[str, float]] = {}
        for i, qid in enumerate(query_ids):
            row = {}
            for d, s in zip(self.ids[i], self.scores[i]):
                if d != "" and np.isfinite(s):
                    row[str(d)] = float(s)
            out[qid] = row
        return out


def _partial_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k best per row (unordered), for n_cols >= 1."""
    k = min(k, scores.shape[1])
    idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return idx, np.take_along_axis(scores, idx, axis=1)


def _block_topk(batch: dict, queries_ref: list, k: int) -> dict:
    """Ray Data UDF: a corpus block -> one row per query with its local top-k."""
    import ray

    queries = ray.get(queries_ref[0])  # zero-copy from the object store
    return block_topk(queries, batch["embedding"], batch["doc_id"], k)


def block_topk(queries: np.ndarray, vectors, doc_ids, k: int) -> dict:
    """One block of documents scored against every query: each query's local top-k, as a
    partial that `merge_topk` takes."""
    emb = np.asarray(vectors, dtype=np.float32)
    ids = np.asarray(doc_ids).astype(object)
    idx, top = _partial_topk(queries @ emb.T, k)
    doc = ids[idx]
    if idx.shape[1] < k:  # a block smaller than k: pad
        pad = k - idx.shape[1]
        top = np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf)
        doc = np.pad(doc, ((0, 0), (0, pad)), constant_values="")
    # ids as lists (an Arrow list<string> column): a fixed-width numpy string tensor
    # cannot be concatenated with another batch's of a different width, and Ray joins
    # the outputs of every batch a task processes into one block
    return {"q": np.arange(len(queries)), "ids": [list(map(str, r)) for r in doc],
            "scores": top.astype(np.float32)}


def merge_topk(partials, nq: int, k: int) -> TopK:
    """Merge streamed partial top-k batches ({q, ids, scores}) into the final ranking."""
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.full((nq, k), "", dtype=object)
    for part in partials:
        q = np.asarray(part["q"])
        scores = np.asarray(part["scores"], dtype=np.float32).reshape(len(q), -1)
        ids = _id_matrix(part["ids"], len(q))
        # one block may hold several batches' rows, so a query can repeat: merge one
        # occurrence at a time (fancy-index assignment keeps only the last duplicate)
        for rows in _occurrences(q):
            qr = q[rows]
            s = np.concatenate([best_s[qr], scores[rows]], axis=1)
            i = np.concatenate([best_i[qr], ids[rows]], axis=1)
            idx, top = _partial_topk(s, k)
            best_s[qr] = top
            best_i[qr] = np.take_along_axis(i, idx, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return TopK(ids=np.take_along_axis(best_i, order, axis=1), scores=np.take_along_axis(best_s, order, axis=1))


def _id_matrix(ids, n: int) -> np.ndarray:
    """Doc ids of a partial as an (n, k) object array (they arrive as arrays of arrays)."""
    arr = np.asarray(ids)
    if arr.dtype == object and arr.ndim == 1:
        arr = np.stack([np.asarray(r, dtype=object) for r in arr]) if n else np.empty((0, 0), dtype=object)
    return arr.astype(object).reshape(n, -1)


def _occurrences(q: np.ndarray):
    """Row masks: the first occurrence of each query, then the second, and so on."""
    order = np.argsort(q, kind="stable")
    sq = q[order]
    starts = np.flatnonzero(np.r_[True, sq[1:] != sq[:-1]])
    rank = np.arange(len(sq)) - np.repeat(starts, np.diff(np.r_[starts, len(sq)]))
    occ = np.empty_like(rank)
    occ[order] = rank
    for level in range(int(occ.max()) + 1 if len(occ) else 0):
        yield occ == level


def search_dataset(embedded_ds, queries: np.ndarray, k: int, *, block: int = 8192) -> TopK:
    """Exact top-k by dot product (cosine on normalised vectors) of queries against a
    Dataset with `doc_id` and `embedding` columns."""
    import ray

    ref = ray.put(np.ascontiguousarray(queries, dtype=np.float32))
    # the ref is wrapped in a list so Ray ships the reference, not a copy per task
    partial = embedded_ds.map_batches(
        _block_topk,
        fn_kwargs={"queries_ref": [ref], "k": k},
        batch_size=block,
        batch_format="numpy",
        num_cpus=0.1,
    )
    return merge_topk(partial.iter_batches(batch_size=None, batch_format="numpy"), len(queries), k)
