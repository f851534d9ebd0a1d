"""Writing embedded documents to the store from Ray workers, in batches.

A server takes upserts from many Ray write tasks at once, each with its own client. Qdrant Edge
lets one process open a shard, so for the embedded engine one actor (`StoreOwner`) holds the
store for the whole stage: write tasks turn their blocks into upsert requests and send them to it
(at most two in flight per task, so memory stays bounded whatever the corpus), read tasks ask it
for stored hashes, and the driver talks to it through `ActorStore`, which is a `Store`. The shard's
pages, its HNSW build and its WAL live in that one process (the writer), not in the driver.

Point ids are uuid5 of the document ids, so writing the same document twice overwrites it: a
re-run of a half-written collection ends with exactly one point per document.
"""

from __future__ import annotations

import heapq
import logging
import time
from pathlib import Path
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from vectune import _faults
from vectune.embed.encoder import FRESH
from vectune.errors import VectuneError, root_cause
from vectune.index.store import PAGE, Record, Store, Target, pages
from vectune.index.engines import open_store
from vectune.index.points import id_checksum, id_keys, point_id, sample_key

#: write tasks only move bytes (the owner actor or the server does the work): a CPU
#: sliver, so they never wait behind the encoder actors (STACK-NOTES: the Ray Data hang)
WRITE_TASK_CPUS = 0.05

log = logging.getLogger(__name__)


def prepare(columns: dict[str, Any], *, batch_size: int, payload: list[str], bm25=None) -> list[dict]:
    """Split a block into upsert requests: point ids, vectors (an ndarray slice), payloads and,
    with `bm25` settings (the spec's section), each document's BM25 vector made from its `text`.

    Runs in the write tasks, so the single embedded-engine owner only applies requests.
    """
    doc_ids = [str(d) for d in columns["doc_id"]]
    vectors = np.asarray(columns["embedding"], dtype=np.float32)
    sparse = None
    if bm25 is not None:
        from vectune.index.store import Sparse
        from vectune.ranking import bm25_vectors

        sparse = [Sparse(list(i), list(v)) for i, v in bm25_vectors(bm25, [str(t) for t in columns["text"]])]
    fields = [f for f in payload if f in columns and f != "doc_id"]
    chunks = []
    for start in range(0, len(doc_ids), batch_size):
        stop = min(start + batch_size, len(doc_ids))
        chunks.append({
            "ids": [point_id(d) for d in doc_ids[start:stop]],
            "vectors": vectors[start:stop],
            "payloads": [{"doc_id": doc_ids[i], **{f: _plain(columns[f][i]) for f in fields}}
                         for i in range(start, stop)],
            **({"sparse": sparse[start:stop]} if sparse is not None else {}),
        })
    return chunks


def apply(store: Store, collection: str, chunks: list[dict], *, new_ids: bool = False) -> int:
    """Upsert prepared requests, one store call each (`new_ids`: see `Store.upsert`)."""
    written = 0
    for chunk in chunks:
        written += store.upsert(collection, chunk["ids"], chunk["vectors"], chunk["payloads"], chunk.get("sparse"),
                                new_ids=new_ids)
        _faults.hit("index.upsert")
    return written


def upsert_columns(store: Store, collection: str, columns: dict[str, Any], *, batch_size: int,
                   payload: list[str], bm25=None) -> int:
    """Upsert a block of (doc_id, embedding, payload fields) in requests of `batch_size` points.

    `store` is any `Store`; through an `ActorStore` the owner actor applies the whole block in
    one call. Returns the number of points written.
    """
    chunks = prepare(columns, batch_size=batch_size, payload=payload, bm25=bm25)
    if isinstance(store, ActorStore):
        return _get(store.actor.upsert_chunks.remote(collection, chunks))
    return apply(store, collection, chunks)


@dataclass
class Written:
    """What a write job did: the points written, and (when asked for and the rows carried their
    text) the verification sample it drew on the way: {doc_id: text} of the `k` documents with
    the smallest `points.sample_key` for the seed, so verifying needs no second corpus pass;
    `fresh`: {doc_id: vector} of those sampled whose rows say (`encoder.FRESH`) the encoder
    computed their vector as they passed, a fresh embedding the verification need not redo."""

    points: int
    sample: dict[str, str] | None = None
    fresh: dict[str, np.ndarray] | None = None


def write_dataset(embedded, store: Store, collection: str, *, batch_size: int, payload: list[str],
                  parallel: int, blocks: int, bm25=None, sample: tuple[int, str, int] | None = None,
                  vectors_of: frozenset[str] | None = None, new_ids: bool = False) -> Written:
    """Stream a Dataset of (doc_id, embedding, payload fields) into `collection` with Ray write
    tasks. `store` is the driver's (see `worker_handle`); `sample`: (k, seed, rows expected) of a
    verification sample to draw from the rows written; `vectors_of`: documents (a sample drawn
    already) whose vectors to bring back when the encoder computed them (`Written.fresh`);
    `new_ids`: no row's point is in `collection` yet (a fresh build: `Store.upsert`)."""
    handle = worker_handle(store)
    sink = StoreDatasink(collection, handle=handle, batch_size=batch_size, payload=payload, bm25=bm25,
                         sample=sample, vectors_of=vectors_of, new_ids=new_ids)
    # the embedded engine applies one request at a time: two tasks keep it fed, more only queue
    concurrency = max(1, min(blocks, 2 if isinstance(handle, ActorStore) else parallel))
    embedded.write_datasink(sink, ray_remote_args={"num_cpus": WRITE_TASK_CPUS}, concurrency=concurrency)
    return Written(int(getattr(sink, "written", 0) or 0), getattr(sink, "sample", None), getattr(sink, "fresh", None))


def worker_handle(store: Store):
    """What a Ray task needs to reach the driver's store: the owner actor's `ActorStore`, or the
    server's `Target` (each task opens its own client)."""
    return store if isinstance(store, ActorStore) else store.where


def open_in_worker(handle) -> tuple[Store, bool]:
    """(a store for this Ray task, whether the task must close it) from `worker_handle`'s value."""
    if isinstance(handle, ActorStore):
        return handle, False
    return open_store(handle), True


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


class StoreOwner:
    """Ray actor that holds the embedded engine's store for the duration of a stage.

    `call` runs any `Store` method (the driver's view, see `ActorStore`); `upsert_chunks` takes
    blocks from the write tasks. The actor runs calls one at a time, which is what Edge needs.
    """

    def __init__(self, where: Target, spec_source: str | None = None):
        self.store = open_store(where, spec_source=spec_source)
        self.busy = 0.0  # seconds spent applying upserts: near the load's wall time = the engine is the bottleneck
        self.points = 0

    def call(self, method: str, *args, **kwargs):
        return getattr(self.store, method)(*args, **kwargs)

    def upsert_chunks(self, collection: str, chunks: list[dict], new_ids: bool = False) -> int:
        start = time.perf_counter()
        try:
            written = apply(self.store, collection, chunks, new_ids=new_ids)
        finally:
            self.busy += time.perf_counter() - start
        self.points += written
        return written

    def id_checksum(self, collection: str) -> tuple[int, int]:
        """`points.id_checksum` of every point id of `collection`, scrolled here, where the shard is:
        a million ids never cross to the driver."""
        return id_checksum(r.id for records in self.store.scroll(collection, None) for r in records)

    def hash_table(self, collection: str) -> tuple[np.ndarray, np.ndarray]:
        """(every point id of `collection` as a 16-byte key, sorted; its stored `text_hash` as an
        unsigned 64-bit integer, 0 where it has none), by one scroll of the one payload field
        here, where the shards are, walking them one open at a time: what a sync diffs the corpus
        against, 24 bytes a point (24 MB at a million) sent back once."""
        keys, hashes = [], []
        for records in self.store.scroll(collection, ["text_hash"]):
            keys.append(id_keys([r.id for r in records]))
            hashes.append(np.array([int(r.payload.get("text_hash") or "0", 16) for r in records], dtype=np.uint64))
        if not keys:
            return np.array([], dtype="S16"), np.array([], dtype=np.uint64)
        keys, hashes = np.concatenate(keys), np.concatenate(hashes)
        order = np.argsort(keys, kind="stable")
        return keys[order], hashes[order]

    def stats(self) -> dict:
        return {"busy_seconds": round(self.busy, 3), "points": self.points}

    def close(self) -> None:
        self.store.close()


class ActorStore:
    """The driver's (and Ray tasks') `Store` view of a `StoreOwner` actor; picklable."""

    def __init__(self, actor, where: Target):
        self.actor = actor
        self.where = where

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        actor = self.actor

        def call(*args, **kwargs):
            return _get(actor.call.remote(method, *args, **kwargs))

        return call

    def scroll(self, name: str, fields: Sequence[str] | None = None, *, page: int = PAGE) -> Iterator[list[Record]]:
        return pages(self.scroll_page, name, fields, page)

    def id_checksum(self, name: str) -> tuple[int, int]:
        """The id checksum of collection `name`, computed by the owner beside its shard."""
        return tuple(_get(self.actor.id_checksum.remote(name)))

    def census(self, name: str) -> dict:
        """`EdgeStore.census` of `name`, taken by the owner beside its shards."""
        got = _get(self.actor.call.remote("census", name))
        return {**got, "id_checksum": tuple(got["id_checksum"])}

    def hash_table(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """`StoreOwner.hash_table` of `name`, taken by the owner beside its shards."""
        keys, hashes = _get(self.actor.hash_table.remote(name))
        return keys, hashes

    def close(self) -> None:
        import ray

        try:
            _get(self.actor.close.remote())
        except Exception as exc:  # noqa: BLE001 - an owner that died (its shards' locks went with it)
            log.warning("the embedded engine's owner did not close cleanly: %s", root_cause(exc))
        finally:
            ray.kill(self.actor)


def start_owner(where: Target, spec_source: str | None = None) -> ActorStore:
    """Start the embedded engine's owner actor on this node (the folder is local to it)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    # num_cpus=0: the actor mostly waits for blocks; reserving a CPU would starve the encoders
    actor = ray.remote(StoreOwner).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
        max_restarts=0,
    ).remote(where, spec_source)
    store = ActorStore(actor, where)
    store.describe()  # surfaces an open failure (an older vectune's folder) here
    return store


def _datasink_base():
    from ray.data import Datasink

    return Datasink


class StoreDatasink(_datasink_base()):
    """Ray Data sink: each write task upserts its blocks, to a server directly or through the
    embedded engine's owner actor."""

    def __init__(self, collection: str, *, handle, batch_size: int, payload: list[str], bm25=None,
                 sample: tuple[int, str, int] | None = None, vectors_of: frozenset[str] | None = None,
                 new_ids: bool = False):
        self.collection = collection
        self.new_ids = new_ids  # a fresh build's load: no row's point is stored yet
        #: documents whose vectors the tasks send back when the encoder computed them (`FRESH`):
        #: a sample chosen before the write (a sync's), to verify without encoding it again
        self.vectors_of = vectors_of
        #: (k, seed, rows expected): each task keeps its k smallest keys under `sample_bar`,
        #: merged on completion
        self.sample_of = sample
        self.bm25 = bm25  # the spec's bm25 section when points carry BM25 vectors
        self.handle = handle  # an ActorStore, or a server's Target
        self.batch_size = batch_size
        self.payload = list(payload)

    def write(self, blocks: Iterable, ctx) -> int:
        from ray.data.block import BlockAccessor

        written = 0
        drawn: list[tuple] = []  # (sample key, doc_id, text, fresh vector or None), at most k
        kept: dict[str, np.ndarray] = {}  # the fresh vectors of `vectors_of`
        pending: deque = deque()  # owner calls in flight: the next block is prepared meanwhile
        owner = self.handle.actor if isinstance(self.handle, ActorStore) else None
        store = None if owner is not None else open_store(self.handle)
        try:
            for block in blocks:
                columns = BlockAccessor.for_block(block).to_batch_format("numpy")
                if not len(columns["doc_id"]):
                    continue
                if self.sample_of and "text" in columns:
                    drawn = _draw(drawn, columns, *self.sample_of)
                if self.vectors_of and FRESH in columns:
                    kept.update(_fresh_of(columns, self.vectors_of))
                chunks = prepare(columns, batch_size=self.batch_size, payload=self.payload, bm25=self.bm25)
                if store is not None:
                    written += apply(store, self.collection, chunks, new_ids=self.new_ids)
                    continue
                pending.append(owner.upsert_chunks.remote(self.collection, chunks, self.new_ids))
                if len(pending) > 1:
                    written += _get(pending.popleft())
            while pending:
                written += _get(pending.popleft())
        finally:
            if store is not None:
                store.close()
        return {"written": written, "sample": drawn if self.sample_of else None, "vectors": kept}

    def on_write_complete(self, write_result) -> None:
        returns = [r for r in write_result.write_returns if r]
        self.written = sum(r["written"] for r in returns)
        if self.vectors_of:
            self.fresh = {d: v for r in returns for d, v in r["vectors"].items()}
        if self.sample_of and all(r["sample"] is not None for r in returns):
            k = self.sample_of[0]
            merged = sorted((row for r in returns for row in r["sample"]), key=lambda row: row[0])[:k]
            if len(merged) >= min(k, self.written):  # else (improbably) too few under the bar:
                # no sample, and the verification draws its own from the corpus
                self.sample = {doc_id: text for _, doc_id, text, _ in merged}
                self.fresh = {doc_id: vector for _, doc_id, _, vector in merged if vector is not None}

    def get_name(self) -> str:
        return "QdrantUpsert"


#: a write task keeps a row as a verification-sample candidate only when its key is among the
#: lowest `sample_bar` of the key space: about 4k + 32 rows of the whole corpus in expectation,
#: so the candidates all tasks send back to the driver stay that many whatever the corpus size
#: (each task keeping its own k smallest made them tasks x k: texts and vectors growing with
#: the corpus), while the k smallest keys lie below the bar but for a chance under e^-20
_SAMPLE_SPARE = 32


def sample_bar(k: int, rows: int) -> bytes | None:
    """The `sample_key` below which the `k` smallest keys of `rows` uniform keys lie, almost
    surely (None: keep every row, a corpus too small to bother)."""
    expected = 4 * k + _SAMPLE_SPARE
    if rows <= expected:
        return None
    return int(2 ** 64 * expected / rows).to_bytes(8, "big")


def _fresh_of(columns: dict, wanted: frozenset[str]) -> dict[str, np.ndarray]:
    """{doc_id: vector} of this block's rows in `wanted` whose vector the encoder computed."""
    fresh = columns[FRESH]
    return {str(d): np.array(columns["embedding"][i], dtype=np.float32)
            for i, d in enumerate(columns["doc_id"]) if fresh[i] and str(d) in wanted}


def _draw(drawn: list, columns: dict, k: int, seed: str, rows: int) -> list:
    """The k rows of smallest `sample_key` among `drawn` and this block's rows below
    `sample_bar(k, rows)`, each with its vector when the block says the encoder computed it
    (`encoder.FRESH`)."""
    bar = sample_bar(k, rows)
    if len(drawn) >= k:
        bar = min(bar, drawn[-1][0]) if bar is not None else drawn[-1][0]
    keys = [sample_key(seed, str(d)) for d in columns["doc_id"]]
    fresh = columns.get(FRESH)
    new = [(key, str(columns["doc_id"][i]), str(columns["text"][i]),
            np.array(columns["embedding"][i], dtype=np.float32) if fresh is not None and fresh[i] else None)
           for i, key in enumerate(keys) if bar is None or key < bar]
    return heapq.nsmallest(k, drawn + new, key=lambda row: row[0])


def _get(ref):
    """The result of an actor call; vectune's own errors raised in the actor come back as themselves."""
    import ray

    from vectune.errors import VectuneError

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, VectuneError):
            raise exc.cause from None
        raise


def write_failure(where: Target, exc: BaseException) -> str:
    """Why a write failed, in one line; for the embedded engine, whether its disk filled up
    (its writer dies of SIGBUS then, and Ray only says the actor died)."""
    own = _own_error(exc)
    if own is not None:  # vectune's own message, not what Ray appended to it on the way
        return f"{type(own).__name__}: {own}"[:1000]
    reason = root_cause(exc)
    if where.embedded and where.path:
        from vectune.index.edge import MIN_FREE, free_bytes

        try:
            free = free_bytes(Path(where.path))
        except OSError:
            return reason
        if free < MIN_FREE and "DiskFull" not in reason:
            return (f"{reason}; the disk under {where.path} has {free / 2**20:.0f} MiB free: it filled up, and "
                    "Qdrant Edge's writer dies on a full disk. Free some space and re-run the same command "
                    "(the build resumes)")
    return reason


def _own_error(exc: BaseException | None) -> BaseException | None:
    """The vectune error a Ray-wrapped chain carries, as raised (not Ray's copy of it), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, VectuneError) and type(exc).__module__.startswith("vectune"):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None
