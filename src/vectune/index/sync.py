"""Incremental sync: bring the live collection in step with a changed corpus, in place.

When the live collection's stamp matches what a build would write now (see
`collections.full_build_reason`), `vectune reindex` does not build a new collection:

    live collection: scroll (point id, text_hash) pages -> two sorted uint64 arrays (driver)
      + the point ids of documents gone from the corpus
    corpus (Ray Data, in blocks): hash each document, look it up in those arrays (read tasks)
      -> the added and changed rows only, materialised in the object store
      -> embedded through the cache (on the driver when they fit in one Ray batch, else by the
         encoder actors) and upserted into the live collection through the driver's client
         (parallel write tasks for a server and more than one batch)
    -> delete the gone points -> verify -> stamp the sync

The corpus never reaches the driver: it holds 16 bytes per stored point, the changed rows'
counts and a sample of them (each block keeps its `verify_sample` smallest keys).

Readers keep querying the alias meanwhile. Each upsert replaces whole points (vector and
payload together) and each delete removes whole points, so a reader never sees half a point,
but for the duration of the sync it may see old and new documents side by side: a changed
document before or after its update, an added one before it lands, a removed one until the
deletes run (after the upserts). A full build (`--full`) is a point-in-time switch instead.

A sync that dies at any point leaves `sync.state: running` in the stamp and the stamp's
corpus hash untouched. The re-run diffs the corpus against what the collection holds by
then: what was upserted counts as unchanged, the rest is written, the deletes run, so it
converges on the same collection.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np

from vectune.data import DomainData
from vectune.embed import Encoder, compact_cache, embed_dataset, encoder_config, plan_actors
from vectune.embed.dataset import expects_encoding
from vectune.errors import IndexingError, root_cause
from vectune.index import collections as cols
from vectune.index.client import Target
from vectune.index.points import content_hashes, doc_keys, hash_hex, payload_fields, point_keys
from vectune.index.verify import verify, verify_ids
from vectune.index.writer import upsert_columns, write_dataset
from vectune.progress import track
from vectune.spec import Spec

log = logging.getLogger(__name__)

_PAGE = 10_000
_DELETE_BATCH = 1_000


def unchanged_since_stamp(stamp: dict, corpus_sha256: str) -> bool:
    """Whether the corpus file (its sha256) is byte for byte the one the live collection was
    last made equal to, with no sync left unfinished since."""
    unfinished = (stamp.get("sync") or {}).get("state") == "running"
    return not unfinished and stamp.get("corpus_sha256") == corpus_sha256


def check_unchanged(client, live: str, spec: Spec, data: DomainData, run_id: str) -> dict:
    """The sync of a corpus file unchanged since the last build or sync: no diff, no write;
    the collection's count and id set are still verified. Needs no Ray."""
    start = time.perf_counter()
    checks = {"points": verify_ids(client, live, data), "ids_checksum": True, "sampled": 0, "min_cosine": None}
    counts = {"added": 0, "updated": 0, "deleted": 0, "unchanged": checks["points"]}
    return _finish(client, live, spec, data, run_id, counts, checks, written=0, start=start,
                   timings={"diff": 0.0}, shortcut="the corpus file is unchanged since the last build or sync")


def sync(client, where: Target, spec: Spec, data: DomainData, run_id: str, live: str, model: dict) -> dict:
    """Bring collection `live` in step with the corpus: upsert the added and changed
    documents, delete the removed ones, verify, stamp. Needs Ray.

    Returns:
        The sync's record: counts (added, updated, deleted, unchanged), points written,
        verification, timings, seconds.

    Raises:
        IndexingError: a write or the verification failed. The alias never moves; the
            stamp keeps `sync.state: running` until a re-run converges.
    """
    import ray

    start = time.perf_counter()
    idx = spec.index
    cols.update_stamp(client, live, sync={"state": "running", "run_id": run_id, "started": cols.now(),
                                          "corpus_sha256": data.corpus.sha256})
    keys, hashes, gone = stored_index(client, live, data.corpus.ids)
    timings = {"scroll": round(time.perf_counter() - start, 2)}

    mark = time.perf_counter()
    blocks = max(2, -(-data.corpus.count // idx.embed_batch_size))
    changed = changed_rows(data, ray.put((keys, hashes)), blocks=blocks).materialize()
    count = changed.count()  # known once materialised: no job
    # up to one Ray batch of changes comes to the driver once, for the counts, the sample and the write
    small = changed.take_batch(count, batch_format="numpy") if 0 < count <= idx.embed_batch_size else None
    added, updated, sample = _summary(changed if small is None else None, small, count, idx.verify_sample)
    timings["diff"] = round(time.perf_counter() - mark, 2)
    log.info("sync %s: %d added, %d changed, %d removed of %d documents", live, added, updated, len(gone),
             data.corpus.count)

    mark = time.perf_counter()
    encoder = Encoder(encoder_config(spec, model["path"], role="document", fingerprint=model["fingerprint"]),
                      remember=True)
    try:
        written = _write(client, where, spec, live, small if small is not None else changed, count, encoder)
    except Exception as exc:  # noqa: BLE001 - a Ray-wrapped worker error: keep its last line
        raise IndexingError(f"syncing {live} failed: {root_cause(exc)}") from exc
    deleted = delete_points(client, live, gone)
    timings["write"] = round(time.perf_counter() - mark, 2)

    mark = time.perf_counter()
    fresh = encoder.without_cache()  # the model the driver loaded to write, if it did
    try:
        checks = verify(client, live, spec, data, model["path"], seed=run_id, encoder=fresh, sample=sample)
    except IndexingError as exc:
        raise IndexingError(f"{exc}. The sync of {live} did not converge; re-run `vectune reindex`, or "
                            "`vectune reindex --full` to build a new collection") from None
    timings["verify"] = round(time.perf_counter() - mark, 2)
    counts = {"added": added, "updated": updated, "deleted": deleted,
              "unchanged": data.corpus.count - added - updated}
    return _finish(client, live, spec, data, run_id, counts, checks, written=written + deleted, start=start,
                   timings=timings)


def _finish(client, live, spec, data, run_id, counts, checks, *, written, start, timings, shortcut=None) -> dict:
    seconds = round(time.perf_counter() - start, 2)
    record = {"state": "done", "run_id": run_id, "finished": cols.now(), **counts, "written": written,
              "corpus_sha256": data.corpus.sha256, "corpus_count": data.corpus.count, "seconds": seconds}
    if shortcut:
        record["shortcut"] = shortcut
    cols.update_stamp(client, live, sync=record, corpus_sha256=data.corpus.sha256, corpus_count=data.corpus.count,
                      spec_hash=spec.digest(), verified=checks)
    log.info("synced %s in place: %s (%.1f s)", live, ", ".join(f"{v} {k}" for k, v in counts.items()), seconds)
    return {**record, "verified": checks, "timings": timings}


# -- the diff ---------------------------------------------------------------------------
def stored_index(client, name: str, corpus_ids: set[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(keys, text hashes) of the stored points, sorted by key, and the ids of points whose
    document left the corpus. One scroll of two short payload fields, no vectors."""
    keys, hashes, gone = [], [], []
    offset = None
    while True:
        points, offset = client.scroll(name, limit=_PAGE, offset=offset, with_payload=["doc_id", "text_hash"],
                                       with_vectors=False)
        ids, page = [], []
        for p in points:
            payload = p.payload or {}
            if payload.get("doc_id") not in corpus_ids:
                gone.append(str(p.id))
                continue
            ids.append(p.id)
            page.append(int(payload.get("text_hash") or "0", 16))  # no hash: rewritten
        keys.append(point_keys(ids))
        hashes.append(np.asarray(page, dtype=np.uint64))
        if offset is None:
            break
    k, h = np.concatenate(keys), np.concatenate(hashes)
    order = np.argsort(k, kind="stable")
    k, h = k[order], h[order]
    if len(k) > 1 and bool(np.any(k[1:] == k[:-1])):
        raise IndexingError(f"{name}: two stored documents share a 64-bit key (a hash collision); "
                            "run `vectune reindex --full`")
    return k, h, gone


def changed_rows(data: DomainData, stored_ref, *, blocks: int):
    """The corpus rows that are new or whose content hash changed (lazy Dataset, columns
    doc_id, title, text, text_hash, change)."""
    return data.corpus_dataset(blocks=blocks).map_batches(
        _changed, fn_kwargs={"stored": stored_ref}, batch_format="numpy", num_cpus=0.1)


_STORED: dict = {}


def _changed(batch: dict, *, stored) -> dict:
    import ray

    key = stored.hex()
    if key not in _STORED:  # once per worker process: the arrays stay in the object store
        _STORED.clear()
        _STORED[key] = ray.get(stored)
    stored_keys, stored_hashes = _STORED[key]
    doc_ids = np.asarray(batch["doc_id"], dtype=object)
    keys = doc_keys(doc_ids)
    hashes = content_hashes(batch["title"], batch["text"])
    if len(stored_keys):
        pos = np.minimum(np.searchsorted(stored_keys, keys), len(stored_keys) - 1)
        found = stored_keys[pos] == keys
        same = found & (stored_hashes[pos] == hashes)
    else:
        found = same = np.zeros(len(keys), dtype=bool)
    keep = ~same
    return {"doc_id": doc_ids[keep], "title": np.asarray(batch["title"], dtype=object)[keep],
            "text": np.asarray(batch["text"], dtype=object)[keep], "text_hash": hash_hex(hashes[keep]),
            "change": np.where(found[keep], "updated", "added").astype(object)}


def _block_summary(batch: dict, *, k: int) -> dict:
    """Counts of a block of changed rows and its k smallest keys with their texts."""
    ids = np.asarray(batch["doc_id"], dtype=object)
    order = np.argsort(doc_keys(ids))[:k]
    change = np.asarray(batch["change"], dtype=object)
    return {"added": [int((change == "added").sum())], "updated": [int((change == "updated").sum())],
            "sample": [json.dumps([[str(ids[i]), str(batch["text"][i])] for i in order])]}


def _summary(changed, small: dict | None, count: int, k: int) -> tuple[int, int, dict[str, str]]:
    """(added, updated, {doc_id: text} of a sample of k changed rows) from per-block summaries
    (of the rows on the driver when `small` holds them all). The sample is the k smallest keys:
    uniform, seeded by the ids, and mergeable across blocks."""
    if count == 0:
        return 0, 0, {}
    if small is not None:
        rows = [{key: v[0] for key, v in _block_summary(small, k=k).items()}]
    else:
        rows = changed.map_batches(_block_summary, fn_kwargs={"k": k}, batch_size=None, batch_format="numpy",
                                   num_cpus=0.1).take_all()
    pairs = [p for r in rows for p in json.loads(r["sample"])]
    pairs.sort(key=lambda p: int(doc_keys([p[0]])[0]))
    return sum(r["added"] for r in rows), sum(r["updated"] for r in rows), dict(pairs[:k])


# -- applying it ------------------------------------------------------------------------
def _write(client, where: Target, spec: Spec, live: str, changed, count: int, encoder: Encoder) -> int:
    """Embed and upsert the changed rows; returns the points written.

    `client` is the driver's own; `changed` the rows as one batch on the driver (up to one
    Ray batch of them), or their Dataset. The driver encodes a batch itself (it loads the
    model to verify anyway): no actor pool to start. A Dataset goes through the encoder
    actors, then to a server from parallel write tasks, or to the embedded engine from the
    driver (one process may open it; Ray Data keeps encoding while the driver upserts).
    """
    if count == 0:
        return 0
    idx = spec.index
    payload = payload_fields(spec)
    cfg = encoder.config
    with track("sync changed documents", count) as counter:
        if isinstance(changed, dict):
            encoder.progress = counter
            batches = [{**changed, "embedding": encoder.encode([str(t) for t in changed["text"]])}]
        else:
            plan = plan_actors(idx.concurrency, idx.num_gpus)
            embedded = embed_dataset(changed, cfg, plan, batch_size=idx.embed_batch_size, keep=tuple(payload),
                                     progress=counter, preload=expects_encoding(cfg, count))
            if not where.embedded:
                written = write_dataset(embedded, client, where, live, batch_size=idx.batch_size, payload=payload,
                                        parallel=idx.parallel, blocks=max(1, changed.num_blocks()))
                compact_cache(cfg)
                return written
            batches = embedded.iter_batches(batch_size=idx.embed_batch_size, batch_format="numpy")
        written = sum(upsert_columns(client, live, b, batch_size=idx.batch_size, payload=payload) for b in batches)
    compact_cache(cfg)
    return written


def delete_points(client, name: str, point_ids: list[str]) -> int:
    """Delete points by id in batches, waiting for each; returns how many were asked for."""
    from qdrant_client import models

    for start in range(0, len(point_ids), _DELETE_BATCH):
        chunk = point_ids[start:start + _DELETE_BATCH]
        client.delete(name, points_selector=models.PointIdsList(points=chunk), wait=True)
    return len(point_ids)
