"""Incremental sync: bring the live collection in step with a changed corpus, in place.

When the live collection's stamp matches what a build would write now (see
`collections.full_build_reason`), `vectune reindex` does not build a new collection:

    embedded engine: the owner actor walks the live version's shards once, one open at a time,
      and sends back every point's key and stored `text_hash`, sorted (`StoredHashes`: 24 bytes
      a point); a server is asked batch by batch instead
    corpus (streamed through the driver a Ray batch at a time): hash each document, look up the
      stored `text_hash` of the batch's point ids (in that table, or from the server)
      -> the added and changed rows only, put in the object store a block at a time
      -> embedded through the cache (when they fit in one Ray batch, by one Ray task, or by the
         driver if it holds the model already; else by the encoder actors) and upserted into the
         live collection (write tasks)
      (the diff also sums the corpus's point ids into their `id_checksum`; for a server it keeps
      them as sorted 16-byte keys: 16 MB at a million documents)
    the points of documents gone from the corpus: the table's points no document matched; for a
      server, one streamed scroll of ids after the upserts, which also checksums every id so that
      verification needs no second scroll
    -> delete the gone points -> let the engine index what changed -> verify (count, integrity,
      the collection's id checksum against the corpus's, a sample of vectors) -> stamp

Nothing proportional to the corpus is held in one process by the sync but ~25 bytes a document
(the embedded engine's table, 25 MB at a million) or 16 (a server's corpus keys): the driver
holds one batch of the corpus and at most one block of changed rows at a time, the changed
rows' counts, a sample of them (the `verify_sample` smallest keys) and the ids of the gone
points. The diff runs in the driver rather than in Ray Data read tasks because it is a lookup
per document: at 100,000 documents the tasks' scheduling cost ten times the lookups themselves.
Asking the shards for each batch's ids instead of walking them once read every shard for every
batch of 1,024 (measured: 15.8 ms a batch over two shards of 100,000; extrapolated: 50-80 s a
million in ten shards); one walk of ids and one payload field reads 200,000 points in ~2 s.

Readers of a server keep querying the alias meanwhile. Each upsert replaces whole points (vector
and payload together) and each delete removes whole points, so a reader never sees half a point,
but for the duration of the sync it may see old and new documents side by side: a changed
document before or after its update, an added one before it lands, a removed one until the
deletes run (after the upserts). A full build (`--full`) is a point-in-time switch instead.
On the embedded engine the sync's owner actor holds the live shard (Qdrant Edge: one process per
shard), so a search in another process is refused with a clear error until the sync ends; a full
build writes a new shard and leaves the live one searchable throughout.

A sync that dies once its diff is done (nothing is written before) leaves `sync.state:
running` in the stamp and the stamp's corpus hash untouched. The re-run diffs the corpus
against what the collection holds by then: what was upserted counts as unchanged, the rest is
written, the deletes run, so it converges on the same collection.
"""

from __future__ import annotations

import heapq
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vectune.data import DomainData
from vectune.embed import Encoder, apart, compact_cache, embed_dataset, encoder_config, plan_actors
from vectune.embed.dataset import expects_encoding
from vectune.errors import IndexingError
from vectune.index import collections as cols
from vectune.index.points import (IdScan, bm25_settings, checksum_plus, content_hashes, doc_keys, hash_hex,
                                  id_checksum, kept_columns, key_checksum, payload_fields, point_ids_and_keys)
from vectune.index.store import PAGE, Hnsw, Store, hnsw
from vectune.index.verify import checksum_of, checksum_text, verify, verify_ids
from vectune.index.writer import upsert_columns, write_dataset
from vectune.progress import track
from vectune.spec import Spec

log = logging.getLogger(__name__)

_DELETE_BATCH = 1_000


def unchanged_since_stamp(stamp: dict, corpus_sha256: str) -> bool:
    """Whether the corpus file (its sha256) is byte for byte the one the live collection was
    last made equal to, with no sync left unfinished since."""
    unfinished = (stamp.get("sync") or {}).get("state") == "running"
    return not unfinished and stamp.get("corpus_sha256") == corpus_sha256


def check_unchanged(store: Store, live: str, spec: Spec, data: DomainData, run_id: str) -> dict:
    """The sync of a corpus file unchanged since the last build or sync: no diff, no write;
    the collection's count, integrity and id set are still verified. Needs no Ray; the embedded
    engine's shard is read by a child process, so its pages never count in this one's memory.

    The same bytes read the same way (`DomainData.corpus_reading`) are the same documents, so
    the ids are checked against the count and id checksum the last verification stamped,
    without parsing the corpus again; a stamp without them (an older vectune's) has the corpus
    read for them."""
    start = time.perf_counter()
    stamp = cols.read_stamp(store, live) or {}
    known = checksum_of((stamp.get("verified") or {}).get("id_checksum"))
    expected = ((int(stamp["corpus_count"]), known)
                if known and stamp.get("corpus_count") is not None
                and stamp.get("corpus_reading") == data.corpus_reading else None)
    points, checksum = verify_ids(store, live, data, apart=True, expected=expected)
    checks = {"points": points, "ids_checksum": True, "id_checksum": checksum_text(checksum), "sampled": 0,
              "min_cosine": None}
    counts = {"added": 0, "updated": 0, "deleted": 0, "unchanged": points}
    return _finish(store, live, spec, (data.corpus_sha256, points, data.corpus_reading), run_id, counts, checks,
                   written=0, start=start, timings={"diff": 0.0},
                   shortcut="the corpus file is unchanged since the last build or sync")


def sync(store: Store, spec: Spec, data: DomainData, run_id: str, live: str, model: dict) -> dict:
    """Bring collection `live` in step with the corpus: upsert the added and changed
    documents, delete the removed ones, verify, stamp. Needs Ray.

    Returns:
        The sync's record: counts (added, updated, deleted, unchanged), points written,
        verification, timings, seconds.

    Raises:
        IndexingError: a write or the verification failed. The alias never moves; the
            stamp keeps `sync.state: running` until a re-run converges.
    """
    start = time.perf_counter()
    idx = spec.index
    # the diff's pass over the corpus is also its validation pass when that has not run yet
    # (`DomainData.corpus_batches`): a bad corpus stops the sync here, before anything is written
    changes = diff(data, store, live, batch=idx.embed_batch_size, k=idx.verify_sample)
    added, updated, sample, count = changes.added, changes.updated, changes.sample, changes.count
    if changes.checksum[0] != data.corpus.count:
        raise IndexingError(f"the corpus read {changes.checksum[0]} documents during the sync, but "
                            f"{data.corpus.count} when it was checked: did {data.corpus.path} change meanwhile?")
    timings = {"diff": round(time.perf_counter() - start, 2)}
    cols.update_stamp(store, live, sync={"state": "running", "run_id": run_id, "started": cols.now(),
                                         "corpus_sha256": data.corpus.sha256})

    mark = time.perf_counter()
    encoder = Encoder(encoder_config(spec, model["path"], role="document", fingerprint=model["fingerprint"]),
                      remember=True)
    try:
        written, computed = _write(store, spec, live, changes.rows, count, encoder, sample=sample)
    except Exception as exc:  # noqa: BLE001 - a Ray-wrapped worker error: keep its last line
        from vectune.index.writer import write_failure

        raise IndexingError(f"syncing {live} failed: {write_failure(store.where, exc)}") from exc
    timings["write"] = round(time.perf_counter() - mark, 2)
    mark = time.perf_counter()
    if changes.gone is not None:
        # the diff walked every stored point: those it found no corpus document for are gone, and
        # verification's census checksums the ids (one walk of the shards it takes anyway)
        scanned, gone = None, changes.gone
    else:
        # one scroll of ids, after the upserts: the gone documents' points, and the id checksum that
        # verification needs (the collection's ids once those are deleted: scanned less gone)
        scanned, gone = scan_ids(store, live, changes.keys)
    changes.keys = changes.gone = None
    deleted = delete_points(store, live, gone)
    timings["scroll"] = round(time.perf_counter() - mark, 2)
    log.info("sync %s: %d added, %d changed, %d removed of %d documents", live, added, updated, len(gone),
             data.corpus.count)
    mark = time.perf_counter()
    # the changes sit in an unindexed segment (searched exactly) until the engine optimises: Edge only
    # does when asked, and indexes or vacuums only what crossed its thresholds, so this is cheap
    built_with = _built_with(store, live, spec, data.corpus.count)
    index = store.build_index(live, built_with, timeout=idx.green_timeout) if written + deleted else None
    timings["index"] = round(time.perf_counter() - mark, 2)

    mark = time.perf_counter()
    fresh = encoder.without_cache()  # the model the driver loaded to write, if it did
    try:
        checks = verify(store, live, spec, data, model["path"], seed=run_id, encoder=fresh, sample=sample,
                        computed=computed, expected=(data.corpus.count, changes.checksum),
                        scanned=None if scanned is None else checksum_plus(scanned, id_checksum(gone), -1))
    except IndexingError as exc:
        raise IndexingError(f"{exc}. The sync of {live} did not converge; re-run `vectune reindex`, or "
                            "`vectune reindex --full` to build a new collection") from None
    timings["verify"] = round(time.perf_counter() - mark, 2)
    counts = {"added": added, "updated": updated, "deleted": deleted,
              "unchanged": data.corpus.count - added - updated}
    return _finish(store, live, spec, (data.corpus.sha256, data.corpus.count, data.corpus_reading), run_id, counts,
                   checks, written=written + deleted, start=start, timings=timings, index=index, searched=built_with)


def _built_with(store: Store, live: str, spec: Spec, points: int) -> Hnsw:
    """The HNSW graph settings `live` was built with (its stamp), so a sync never changes them,
    and the spec's search `ef` for its `points` points now (a search-time setting: `auto` follows
    the collection as syncs grow or shrink it)."""
    h = (cols.read_stamp(store, live) or {}).get("hnsw") or {}
    now = hnsw(spec, points, per_shard=store.layout(live).shard_points or points)
    return Hnsw(m=h.get("m", now.m), ef_construct=h.get("ef_construct", now.ef_construct), ef=now.ef,
                on_disk=now.on_disk)


def _finish(store, live, spec, corpus: tuple[str, int, str], run_id, counts, checks, *, written, start, timings,
            shortcut=None, index=None, searched: Hnsw | None = None) -> dict:
    """Stamp the sync done. `corpus`: (sha256, document count, `DomainData.corpus_reading`);
    `searched`: the HNSW settings the collection is searched with from now on (its `ef` may have moved)."""
    sha256, count, reading = corpus
    seconds = round(time.perf_counter() - start, 2)
    record = {"state": "done", "run_id": run_id, "finished": cols.now(), **counts, "written": written,
              "corpus_sha256": sha256, "corpus_count": count, "seconds": seconds}
    if shortcut:
        record["shortcut"] = shortcut
    extra = {"index": index} if index else {}
    if searched is not None:
        extra["hnsw"] = {"m": searched.m, "ef_construct": searched.ef_construct, "ef": searched.ef}
    cols.update_stamp(store, live, sync=record, corpus_sha256=sha256, corpus_count=count, corpus_reading=reading,
                      spec_hash=spec.digest(), verified=checks, **extra)
    log.info("synced %s in place: %s (%.1f s)", live, ", ".join(f"{v} {k}" for k, v in counts.items()), seconds)
    return {**record, "verified": checks, "timings": timings}


# -- the diff ---------------------------------------------------------------------------
def stored_hashes(store: Store, name: str, point_ids: list[str]) -> dict[str, int]:
    """{point id: stored content hash} of those of `point_ids` the collection holds (0 for a point
    without a hash: never equal to a document's, so it is rewritten)."""
    got = store.retrieve(name, point_ids, ["text_hash"])
    return {r.id: int(r.payload.get("text_hash") or "0", 16) for r in got}


def scan_ids(store: Store, name: str, keys: np.ndarray, *, page: int = PAGE) -> tuple[tuple[int, int], list[str]]:
    """(`id_checksum` of the collection's point ids, those of them that are no corpus document's:
    not among `keys`, the corpus's sorted `point_keys`), by one streamed scroll of ids: no payload
    is read."""
    scan = IdScan(keys)
    for records in store.scroll(name, None, page=page):
        scan.add([r.id for r in records])
    return scan.result()


class StoredHashes:
    """Every stored point's key and `text_hash`, sorted by key (`StoreOwner.hash_table`: one walk
    of the embedded engine's shards), looked up here batch by batch instead of asking the shards
    for each batch's ids (at 10 shards of 100,000, a lookup of 1,024 ids reads every shard); the
    points no corpus document matched are the gone ones. 25 bytes a point: the key, the hash and
    whether a document matched it."""

    def __init__(self, keys: np.ndarray, hashes: np.ndarray):
        self.keys, self.hashes = keys, hashes
        self.seen = np.zeros(len(keys), dtype=bool)

    def lookup(self, point_ids: list[str], keys: np.ndarray) -> dict[str, int]:
        """`stored_hashes` of a batch (its point ids and their keys), from the table."""
        if not len(self.keys):
            return {}
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        found = self.keys[at] == keys
        self.seen[at[found]] = True
        return {p: int(h) for p, h, f in zip(point_ids, self.hashes[at], found) if f}

    def gone(self) -> list[str]:
        """The point ids of the stored points no looked-up document matched."""
        raw = self.keys[~self.seen].tobytes()  # whole 16-byte keys: an item read drops trailing NULs
        return [str(uuid.UUID(bytes=raw[i:i + 16])) for i in range(0, len(raw), 16)]


@dataclass
class Changes:
    """What the diff found: counts, a verification sample ({doc_id: text} of the `verify_sample`
    changed rows with the smallest `points.doc_keys`: uniform, seeded by the ids) and the rows
    (doc_id, title, text, text_hash, change): one batch of numpy columns when they fit in one
    Ray batch, else a Dataset of blocks in the object store; None when nothing changed.
    Computed on the way, from the point ids the lookups needed anyway: the `id_checksum` of
    every corpus document's point id and their sorted 16-byte `keys` (16 MB at a million)."""

    added: int = 0
    updated: int = 0
    sample: dict[str, str] = field(default_factory=dict)
    rows: Any = None
    checksum: tuple[int, int] = (0, 0)
    keys: Any = None
    gone: list[str] | None = None

    @property
    def count(self) -> int:
        return self.added + self.updated


def diff(data: DomainData, store: Store, name: str, *, batch: int, k: int) -> Changes:
    """The corpus rows that are new or whose content hash changed against collection `name`.

    The corpus streams through this process `batch` documents at a time (and is validated on
    the way, when it has not been: `DomainData.corpus_batches`); each batch's stored hashes come
    from `stored_hashes` (the owner actor's lookup, or the server's). Changed rows go to the
    object store a block (about `batch` rows) at a time, so this process holds one batch and
    one block at most, whatever the corpus.
    """
    import pyarrow as pa

    out = Changes()
    heap: list[tuple[int, str, str]] = []  # (-key, doc_id, text): the k smallest keys so far
    held: list[pa.Table] = []
    held_rows = 0
    refs: list = []
    keys: list[np.ndarray] = []
    table = StoredHashes(*store.hash_table(name)) if hasattr(type(store), "hash_table") else None
    for rows, batch_keys in _changed_batches(data.corpus_batches(batch), store, name, table):
        if table is None:  # the gone points are found by a scroll after the upserts (`scan_ids`)
            keys.append(batch_keys)
        out.checksum = checksum_plus(out.checksum, key_checksum(batch_keys))
        n = len(rows["doc_id"])
        if not n:
            continue
        added = int((rows["change"] == "added").sum())
        out.added += added
        out.updated += n - added
        for key, doc_id, text in zip(doc_keys(rows["doc_id"]), rows["doc_id"], rows["text"]):
            item = (-int(key), str(doc_id), str(text))
            if len(heap) < k:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
        held.append(pa.table({c: pa.array([str(v) for v in values], type=pa.string()) for c, values in rows.items()}))
        held_rows += n
        if held_rows > batch:
            refs.append(_put(held))
            held, held_rows = [], 0
    out.sample = {d: t for _, d, t in sorted(heap, reverse=True)}
    if table is not None:
        out.gone = table.gone()
    else:
        out.keys = np.sort(np.concatenate(keys)) if keys else np.array([], dtype="S16")
    del keys, table
    if refs:
        if held:
            refs.append(_put(held))
        import ray.data

        out.rows = ray.data.from_arrow_refs(refs)
    elif held:
        table = pa.concat_tables(held)
        out.rows = {c: np.asarray(table.column(c).to_pylist(), dtype=object) for c in table.column_names}
    return out


def _put(tables: list) -> Any:
    import pyarrow as pa
    import ray

    return ray.put(pa.concat_tables(tables))


def _changed_batches(batches, store: Store, name: str, table: StoredHashes | None = None):
    """(`_changed` of each corpus batch, the batch's point ids as 16-byte keys), in order. The
    stored hashes of a batch come from `table` when the diff has one, else from the store
    (`stored_hashes`: a server); either lookup runs on a second thread while this one reads and
    hashes the next batch (a server's lets go of the GIL while it waits); two batches are held
    at most, and the table is looked up by that one thread, batch after batch."""
    from concurrent.futures import ThreadPoolExecutor

    def lookup(pids: list[str], keys: np.ndarray) -> dict[str, int]:
        return table.lookup(pids, keys) if table is not None else stored_hashes(store, name, pids)

    with ThreadPoolExecutor(1, thread_name_prefix="vectune-diff") as lookups:
        pending = None
        for batch in batches:
            pids, keys = point_ids_and_keys(batch["doc_id"])
            hashes = content_hashes(batch["title"], batch["text"])
            ahead = (batch, pids, hashes, keys, lookups.submit(lookup, pids, keys))
            if pending is not None:
                yield _changed(*pending[:3], pending[4].result()), pending[3]
            pending = ahead
        if pending is not None:
            yield _changed(*pending[:3], pending[4].result()), pending[3]


def _changed(batch: dict, pids: list[str], hashes: np.ndarray, stored: dict[str, int]) -> dict:
    """The rows of a corpus batch that are new to the collection or whose content hash differs
    from the stored one (`stored`: `stored_hashes` of `pids`), with their `text_hash` and
    `change` (added or updated)."""
    doc_ids = np.asarray(batch["doc_id"], dtype=object)
    found = np.fromiter((p in stored for p in pids), dtype=bool, count=len(pids))
    same = found & np.fromiter((stored.get(p, -1) == int(h) for p, h in zip(pids, hashes)), dtype=bool,
                               count=len(pids))
    keep = ~same
    return {"doc_id": doc_ids[keep], "title": np.asarray(batch["title"], dtype=object)[keep],
            "text": np.asarray(batch["text"], dtype=object)[keep], "text_hash": hash_hex(hashes[keep]),
            "change": np.where(found[keep], "updated", "added").astype(object)}


# -- applying it ------------------------------------------------------------------------
def _write(store: Store, spec: Spec, live: str, changed, count: int, encoder: Encoder, *,
           sample: dict[str, str]) -> tuple[int, dict]:
    """Embed and upsert the changed rows; returns (the points written, {doc_id: vector} of the
    verification `sample`'s documents the encoder actors computed as they passed).

    `changed` is the rows as one batch on the driver (up to one Ray batch of them), or a
    Dataset of them (`Changes.rows`). A batch is encoded by one Ray task (`apart.encode`: no
    actor pool to start, and no model loaded into the driver, which then stays the same size
    whatever the sync), or by the driver when it holds the model already; the verification reuses
    those vectors. A Dataset goes through the encoder actors, then to the store from write tasks
    (to a server in parallel, to an Edge shard through the actor that holds it), which bring back
    the sample's vectors the actors computed, for the verification to reuse likewise.
    """
    if count == 0:
        return 0, {}
    idx = spec.index
    payload = payload_fields(spec)
    cfg = encoder.config
    computed: dict = {}
    with track("sync changed documents", count) as counter:
        if isinstance(changed, dict):
            vectors = apart.encode(encoder, [str(t) for t in changed["text"]], idx.num_gpus, progress=counter)
            batch = {**changed, "embedding": vectors}
            written = upsert_columns(store, live, batch, batch_size=idx.batch_size, payload=payload,
                                     bm25=bm25_settings(spec))
        else:
            plan = plan_actors(idx.concurrency, idx.num_gpus)
            embedded = embed_dataset(changed, cfg, plan, batch_size=idx.embed_batch_size, keep=kept_columns(spec),
                                     progress=counter, preload=expects_encoding(cfg, count), mark_fresh=True)
            done = write_dataset(embedded, store, live, batch_size=idx.batch_size, payload=payload,
                                 parallel=idx.parallel, blocks=max(1, changed.num_blocks()),
                                 bm25=bm25_settings(spec), vectors_of=frozenset(sample))
            written, computed = done.points, done.fresh or {}
    compact_cache(cfg)
    return written, computed


def delete_points(store: Store, name: str, point_ids: list[str]) -> int:
    """Delete points by id in batches; returns how many were asked for."""
    for start in range(0, len(point_ids), _DELETE_BATCH):
        store.delete(name, point_ids[start:start + _DELETE_BATCH])
    return len(point_ids)
