"""Writing embedded documents to Qdrant from Ray workers, in batches.

A server takes upserts from many Ray write tasks at once, each with its own client.
The embedded engine can be opened by one process only, so one actor (`EmbeddedOwner`)
owns its client for the whole stage: write tasks turn their blocks into upsert requests
and send them to it, and the driver talks to it through `ActorClient`, which looks like a
`QdrantClient`.

Point ids are uuid5 of the document ids, so writing the same document twice overwrites
it: a re-run of a half-written collection ends with exactly one point per document.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Iterable

import numpy as np

from vectune import _faults
from vectune.index.client import Target, open_target
from vectune.index.points import point_id

#: write tasks only move bytes (the owner actor or the server does the work): a CPU
#: sliver, so they never wait behind the encoder actors (STACK-NOTES: the Ray Data hang)
WRITE_TASK_CPUS = 0.05

log = logging.getLogger(__name__)


def prepare(columns: dict[str, Any], *, batch_size: int, payload: list[str]) -> list[dict]:
    """Split a block into upsert requests: point ids, vectors (an ndarray slice) and payloads.

    Runs in the write tasks, so the single embedded-engine owner only applies requests.
    """
    doc_ids = [str(d) for d in columns["doc_id"]]
    vectors = np.asarray(columns["embedding"], dtype=np.float32)
    fields = [f for f in payload if f in columns and f != "doc_id"]
    chunks = []
    for start in range(0, len(doc_ids), batch_size):
        stop = min(start + batch_size, len(doc_ids))
        chunks.append({
            "ids": [point_id(d) for d in doc_ids[start:stop]],
            "vectors": vectors[start:stop],
            "payloads": [{"doc_id": doc_ids[i], **{f: _plain(columns[f][i]) for f in fields}}
                         for i in range(start, stop)],
        })
    return chunks


def fast_commits(client, collection: str) -> bool:
    """Put an embedded collection's store in WAL mode with synchronous=NORMAL; True if it is.

    The embedded engine keeps each collection in SQLite and commits once per point. In the
    default rollback-journal mode with synchronous=FULL every commit waits for the disk
    (fsync), which caps an on-disk store at ~1k points/s. In WAL mode with NORMAL, a commit
    is an append to the log, synced at checkpoints: still atomic and durable across a crash
    of the process (a killed re-index); an OS crash or power cut can lose the last commits,
    never corrupt the file, and the verify step would catch the missing points before any
    alias moved. A server (`url:`) or `:memory:` has no such store: nothing to do.
    """
    local = getattr(client, "_client", None)
    try:
        name = getattr(local, "aliases", {}).get(collection, collection)
        conn = local.collections[name].storage.storage  # qdrant_client.local: LocalCollection -> sqlite3
    except (AttributeError, KeyError, TypeError):
        return False
    try:  # both are no-ops when already set: cheap enough to run once per block
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous=NORMAL")
    except Exception as exc:  # noqa: BLE001 - an unusual store keeps its defaults, slower but correct
        log.debug("embedded store of %s keeps its journal mode: %s", collection, exc)
        return False
    return str(mode).lower() == "wal"


def apply(client, collection: str, chunks: list[dict]) -> int:
    """Upsert prepared requests, one `Batch` each, waiting for each to be applied."""
    from qdrant_client import models

    fast_commits(client, collection)
    written = 0
    for chunk in chunks:
        # built from our own well-typed columns: skip pydantic's per-float validation (~7% of an upsert)
        batch = models.Batch.model_construct(ids=chunk["ids"], vectors=chunk["vectors"].tolist(),
                                             payloads=chunk["payloads"])
        client.upsert(collection, points=batch, wait=True)
        written += len(chunk["ids"])
        _faults.hit("index.upsert")
    return written


def upsert_columns(client, collection: str, columns: dict[str, Any], *, batch_size: int, payload: list[str]) -> int:
    """Upsert a block of (doc_id, embedding, payload fields) in requests of `batch_size` points.

    `client` is a `QdrantClient`, or the driver's `ActorClient` of the embedded engine, whose
    owner actor then applies the requests. Returns the number of points written.
    """
    chunks = prepare(columns, batch_size=batch_size, payload=payload)
    if isinstance(client, ActorClient):
        return _get(client.actor.upsert.remote(collection, chunks))
    return apply(client, collection, chunks)


def write_dataset(embedded, client, where: Target, collection: str, *, batch_size: int, payload: list[str],
                  parallel: int, blocks: int) -> int:
    """Stream a Dataset of (doc_id, embedding, payload fields) into `collection` with Ray
    write tasks; returns the points written. `client` is the driver's (see `upsert_columns`)."""
    owner = getattr(client, "actor", None)
    sink = QdrantDatasink(collection, where=where, owner=owner, batch_size=batch_size, payload=payload)
    # the embedded engine applies one request at a time: two tasks keep it fed, more only queue
    concurrency = max(1, min(blocks, 2 if owner is not None else parallel))
    embedded.write_datasink(sink, ray_remote_args={"num_cpus": WRITE_TASK_CPUS}, concurrency=concurrency)
    return int(getattr(sink, "written", 0) or 0)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


class EmbeddedOwner:
    """Ray actor that owns the embedded engine's client for the duration of a stage.

    `call` runs any `QdrantClient` method (the driver's view, see `ActorClient`);
    `upsert` takes blocks from the write tasks. The actor runs calls one at a time,
    which is what the embedded engine needs.
    """

    def __init__(self, where: Target):
        self.client = open_target(where)
        self.busy = 0.0  # seconds spent applying upserts: near the load's wall time = the engine is the bottleneck
        self.points = 0

    def call(self, method: str, *args, **kwargs):
        return getattr(self.client, method)(*args, **kwargs)

    def upsert(self, collection: str, chunks: list[dict]) -> int:
        start = time.perf_counter()
        try:
            written = apply(self.client, collection, chunks)
        finally:
            self.busy += time.perf_counter() - start
        self.points += written
        return written

    def stats(self) -> dict:
        return {"busy_seconds": round(self.busy, 3), "points": self.points}

    def close(self) -> None:
        self.client.close()


class ActorClient:
    """The driver's `QdrantClient`-like view of an `EmbeddedOwner` actor."""

    def __init__(self, actor):
        self.actor = actor

    def __getattr__(self, method: str):
        import ray

        def call(*args, **kwargs):
            return ray.get(self.actor.call.remote(method, *args, **kwargs))

        return call

    def close(self) -> None:
        import ray

        try:
            ray.get(self.actor.close.remote())
        finally:
            ray.kill(self.actor)


def start_owner(where: Target) -> ActorClient:
    """Start the embedded engine's owner actor on this node (the folder is local to it)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    # num_cpus=0: the actor mostly waits for blocks; reserving a CPU would starve the encoders
    actor = ray.remote(EmbeddedOwner).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
        max_restarts=0,
    ).remote(where)
    client = ActorClient(actor)
    client.get_collections()  # surfaces an open failure (a held lock) here, as IndexingError
    return client


def _datasink_base():
    from ray.data import Datasink

    return Datasink


class QdrantDatasink(_datasink_base()):
    """Ray Data sink: each write task upserts its blocks, to a server directly or
    through the embedded engine's owner actor."""

    def __init__(self, collection: str, *, where: Target, owner=None, batch_size: int, payload: list[str]):
        self.collection = collection
        self.where = where
        self.owner = owner  # an EmbeddedOwner actor handle, or None for a server
        self.batch_size = batch_size
        self.payload = list(payload)

    def write(self, blocks: Iterable, ctx) -> int:
        from ray.data.block import BlockAccessor

        written = 0
        pending: deque = deque()  # owner calls in flight: the next block is prepared meanwhile
        client = None if self.owner is not None else open_target(self.where)
        try:
            for block in blocks:
                columns = BlockAccessor.for_block(block).to_batch_format("numpy")
                if not len(columns["doc_id"]):
                    continue
                chunks = prepare(columns, batch_size=self.batch_size, payload=self.payload)
                if client is not None:
                    written += apply(client, self.collection, chunks)
                    continue
                pending.append(self.owner.upsert.remote(self.collection, chunks))
                if len(pending) > 1:
                    written += _get(pending.popleft())
            while pending:
                written += _get(pending.popleft())
        finally:
            if client is not None:
                client.close()
        return written

    def on_write_complete(self, write_result) -> None:
        self.written = sum(r for r in write_result.write_returns if r)

    def get_name(self) -> str:
        return "QdrantUpsert"


def _get(ref) -> int:
    import ray

    return ray.get(ref)
