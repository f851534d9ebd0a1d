"""The re-index stage: bring the collection the alias serves in step with the corpus and
the promoted model.

Same vector settings as the live collection's stamp: sync it in place (`sync.py`: only
the added, changed and removed documents are written). Otherwise, or with `--full`, build
a new collection, verify it, then move the alias to it in one atomic call:

    corpus (Ray Data, in blocks) -> encoder actors -> write tasks -> a new version `<base>__<run_id>`
    -> build HNSW once over the loaded points -> verify -> swap alias -> drop old versions

The corpus never comes to the driver. A failure anywhere before the swap leaves the
alias where it was; re-running the same run id resumes: point ids derive from document
ids, so the rewrite overwrites, and the embedding cache makes it cheap.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from vectune import _faults
from vectune.data import DomainData
from vectune.embed import (apart, compact_cache, embed_dataset, encoder_config, model_fingerprint, plan_actors,
                           resolve_model)
from vectune.embed.corpus import corpus_batching
from vectune.embed.dataset import embed_here, expects_encoding, in_driver
from vectune.embed.encoder import Encoder
from vectune.runtime import ray_session
from vectune.errors import IndexingError, Problem, SpecError, root_cause
from vectune.precision import resolved
from vectune.progress import track
from vectune.index import collections as cols
from vectune.index import sync
from vectune.index.store import MEMORY, Store, Target, hnsw, layout, target
from vectune.index.engines import open_store
from vectune.index.points import add_content_hash, bm25_settings, kept_columns, payload_fields, sparse_identity
from vectune.runs import Run
from vectune.spec import Spec

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


# -- choosing the model -----------------------------------------------------------------
def promoted_model(spec: Spec) -> tuple[str, str]:
    """(model path, where it came from): the newest tuned model of this spec whose run
    passed the gate, else the spec's base model."""
    for run in reversed(Run.all(spec)):
        m = run.manifest
        tuned = (m.get("models") or {}).get("tuned") or {}
        if (m.get("gate") or {}).get("passed") is True and tuned.get("path"):
            if Path(tuned["path"]).is_dir():
                return tuned["path"], f"tuned model of run {run.id} (gate passed)"
            log.warning("run %s passed the gate but its model %s is gone; looking further back", run.id, tuned["path"])
    return resolve_model(spec.model.base, spec.base_dir), f"base model {spec.model.base} (no run passed the gate)"


# -- the stage --------------------------------------------------------------------------
def reindex(spec: Spec, run: Run, model_path: str, *, full: bool = False) -> dict:
    """Bring the collection the alias serves in step with the corpus and `model_path`.

    When the live collection's stamp matches what a build would write now, sync it in place
    (`vectune.index.sync`: only added, changed and removed documents are written); else, or
    with `full`, build, verify and promote a new collection `<base>__<run id>`.

    Records the collection in the run manifest (`collection`) and the stage as `reindex`.
    Starts Ray when it is not running (or uses the running one); a corpus file unchanged
    since the last build or sync needs none.

    Returns:
        The manifest's `collection` entry: `mode` (incremental | full), `reason` (why a full
        build), counts (added, updated, deleted, unchanged), name, alias, points, model,
        previous live collection, deleted versions, verification, seconds.

    Raises:
        IndexingError: Qdrant unreachable, or verification refused the collection; the
            alias is untouched either way.
    """
    if not _RUN_ID.match(run.id):
        raise SpecError("--run-id", [Problem("--run-id", f"run id {run.id!r} cannot name a collection: use letters, "
                                                         "digits, `_`, `-`")])
    spec = resolved(spec, train=False)  # `auto` precision: what the vectors are stamped with (vectune.precision)
    where = target(spec)
    if where.embedded and where.path == MEMORY:
        raise SpecError(str(spec.source or "<spec>"), [Problem(
            "index.qdrant.path", "`:memory:` lives inside one process and would vanish with the re-index workers; "
                                 "use a folder (a tmpfs one for tests) or a server url")])
    data = DomainData(spec)
    fingerprint = model_fingerprint(model_path)
    name = cols.collection_name(spec, run.id)
    # the file's digest, not its validation pass: an untouched file is never parsed again (`sync.check_unchanged`)
    inputs = {"model": fingerprint, "corpus": data.corpus_sha256, "index": spec.section_digest("index", "model"),
              "qdrant": where.describe()}
    if run.is_done("reindex", inputs) and run.manifest.get("collection", {}).get("name") == name:
        log.info("run %s already re-indexed %s; nothing to do", run.id, name)
        return run.manifest["collection"]
    before = run.manifest.get("collection") or {}
    # a full build of this run id that stopped (manifests older than `mode` held only full builds)
    if (not full and before.get("name") == name and before.get("mode", "full") == "full"
            and run.stage_info("reindex").get("status") in ("running", "failed")):
        log.info("run %s was building %s when it stopped: resuming that full build", run.id, name)
        full = True
    model = {"path": model_path, "fingerprint": fingerprint}
    entry = {"name": name, "alias": cols.alias_name(spec), "mode": None, "state": "building", "model": model,
             "qdrant": where.describe()}  # mode: not chosen yet (Qdrant not reached)
    run.record("collection", entry)
    probe = None
    try:
        with run.stage("reindex", inputs) as outputs:
            # fail fast (server down, an older vectune's folder) before Ray starts
            probe = open_store(where, spec_source=str(spec.source) if spec.source else None)
            live, reason = ((None, "--full asked for a new collection" if before.get("name") != name else
                             f"resuming the full build of {name}") if full else _sync_plan(probe, spec, fingerprint))
            quick = live is not None and sync.unchanged_since_stamp(cols.read_stamp(probe, live), data.corpus_sha256)
            entry = {**entry, "name": live or name, "mode": "full" if live is None else "incremental",
                     "reason": reason, "state": "building" if live is None else "syncing"}
            run.record("collection", entry)
            if quick:  # no Ray: the driver counts and checks the ids itself
                record = _synced(entry, sync.check_unchanged(probe, live, spec, data, run.id))
            else:
                probe.close()  # the embedded engine's owner actor opens the shards next
                probe = None
                with ray_session(spec.runtime):
                    store = stage_store(where, spec)
                    try:
                        if live is not None:
                            record = _synced(entry, sync.sync(store, spec, data, run.id, live, model))
                        else:
                            record = {**entry, **_build(store, spec, run, data, name, model)}
                    finally:
                        store.close()
            outputs.update({k: record[k] for k in ("name", "mode", "points", "seconds", "previous", "added",
                                                   "updated", "deleted", "unchanged")})
    except BaseException as exc:
        run.record("collection", {**run.manifest["collection"], "state": "failed",
                                  "error": f"{type(exc).__name__}: {exc}"[:1000]})
        raise
    finally:
        if probe is not None:
            probe.close()
    run.record("collection", record)
    return record


def vector_settings(spec: Spec, fingerprint: str) -> dict:
    """What decides a collection's vectors and payloads (`collections.SYNC_FIELDS`)."""
    from vectune.embed.encoder import int8_recipe

    spec = resolved(spec, train=False)  # stamps carry the resolved precision, never `auto`
    return {"format": cols.FORMAT, "model_fingerprint": fingerprint, "precision": spec.model.precision,
            "int8_recipe": int8_recipe(spec.model.precision),
            "document_prefix": spec.model.document_prefix, "max_seq_length": spec.model.max_seq_length,
            "normalize": spec.model.normalize, "distance": spec.index.distance, "payload": payload_fields(spec),
            "sparse": sparse_identity(spec)}


def _sync_plan(store, spec: Spec, fingerprint: str) -> tuple[str | None, str | None]:
    """(live collection to sync in place, None) or (None, why a full build)."""
    live = cols.live_collection(store, cols.alias_name(spec))
    if live is None:
        return None, f"alias {cols.alias_name(spec)!r} serves no collection yet"
    size, distance = cols.vector_params(store, live)
    reason = cols.full_build_reason(cols.read_stamp(store, live), vector_settings(spec, fingerprint),
                                    size=size, distance=distance)
    if reason is not None:
        log.info("full build: %s", reason)
        return None, reason
    return live, None


def _synced(entry: dict, record: dict) -> dict:
    """A sync's record as the manifest's `collection` entry."""
    counts = {k: record[k] for k in ("added", "updated", "deleted", "unchanged")}
    return {**entry, "state": "live", **counts, "points": record["verified"]["points"], "written": record["written"],
            "previous": entry["name"], "deleted_collections": [], "verified": record["verified"],
            "seconds": record["seconds"], "timings": record["timings"], "sync": record}


def stage_store(where: Target, spec: Spec) -> Store:
    """The stage's store: a server's client in the driver; for the embedded engine, the owner
    actor that holds it for the whole stage (its shards' pages and index build stay there)."""
    if not where.embedded:
        return open_store(where)
    from vectune.index.writer import start_owner

    try:
        return start_owner(where, str(spec.source) if spec.source else None)
    except IndexingError:
        raise
    except Exception as exc:  # noqa: BLE001 - an actor that died opening the folder
        raise IndexingError(f"cannot start the embedded Qdrant owner for {where.path}: {root_cause(exc)}") from None


def _build(store: Store, spec: Spec, run: Run, data: DomainData, name: str, model: dict) -> dict:
    """Build `name` (or take the verified candidate the evaluate stage built of it), then
    move the alias to it and drop versions beyond `index.keep`."""
    start = time.perf_counter()
    alias = cols.alias_name(spec)
    live_before = cols.live_collection(store, alias)
    built = construct(store, spec, run.id, data, name, model, live=live_before)
    previous = cols.promote(store, spec, name)
    deleted = cols.retain(store, spec, name)
    seconds = round(time.perf_counter() - start, 2)
    checks = built["verified"]
    log.info("alias %s -> %s (%d points, %.1f s); previous %s", alias, name, checks["points"], seconds, previous)
    # a new collection: every point counts as added to it
    return {**built, "alias": alias, "state": "live", "added": checks["points"], "updated": 0, "deleted": 0,
            "unchanged": 0, "previous": previous, "deleted_collections": deleted, "qdrant": store.where.describe(),
            "seconds": seconds}


def build_stamp(spec: Spec, data: DomainData, run_id: str, model: dict, dimension: int) -> dict:
    """The stamp a build of `model` over the corpus writes (state `building`)."""
    h = hnsw(spec, data.corpus.count)
    return {
        **vector_settings(spec, model["fingerprint"]), "spec": spec.name, "base": cols.base_name(spec),
        "run_id": run_id, "spec_hash": spec.digest(), "model_path": model["path"], "dimension": dimension,
        "corpus_sha256": data.corpus.sha256, "corpus_count": data.corpus.count, "corpus_reading": data.corpus_reading,
        "created": cols.now(),
        "hnsw": {"m": h.m, "ef_construct": h.ef_construct, "ef": h.ef}, "state": "building",
    }


#: what must match for a verified, never served build to be promoted as it is: the vectors, the
#: corpus they came from, and the index over them
SAME_BUILD = cols.SYNC_FIELDS + ("corpus_sha256", "corpus_reading", "dimension", "hnsw")


def construct(store: Store, spec: Spec, run_id: str, data: DomainData, name: str, model: dict, *,
              live: str | None, state: str = "ready", extra: dict | None = None) -> dict:
    """Load `model`'s vectors of the corpus into `name`, build its HNSW index and verify it,
    leaving it stamped `state` (`ready`; `candidate`: verified for the gate, never served;
    `scoring`: built only to score a model as it would be served). The alias is not touched.

    A collection already verified from the same vectors, corpus and index (`SAME_BUILD`) is
    verified again and kept rather than loaded anew: the evaluate stage's candidate becomes
    the re-index stage's build.
    """
    start = time.perf_counter()
    cfg = encoder_config(spec, model["path"], role="document", fingerprint=model["fingerprint"])
    # one uncached encoder: the dimension now, a fresh sample for verification later (a driver
    # without the model asks a Ray task for both: vectune.embed.apart)
    fresh = Encoder(encoder_config(spec, model["path"], role="document", cache=False, fingerprint=model["fingerprint"]))
    dimension = apart.dimension(fresh, spec.index.num_gpus)
    stamp = {**build_stamp(spec, data, run_id, model, dimension), **(extra or {})}
    old = store.read_stamp(name) if store.exists(name) else None
    reuse = (old is not None and old.get("state") in ("candidate", "scoring", "ready") and name != live
             and all(old.get(k) == stamp.get(k) for k in SAME_BUILD))
    timings: dict = {}
    if reuse:
        log.info("%s already holds these vectors, verified (%s): verifying it again instead of rebuilding",
                 name, old.get("state"))
        resumed, written, index, sample, computed = True, 0, old.get("index") or {}, None, None
    else:
        if store.where.embedded:
            _check_space(store.where, data, dimension)
        resumed = _prepare(store, spec, name, stamp, live=live)
        timings["prepare"] = round(time.perf_counter() - start, 2)
        mark = time.perf_counter()
        loaded = _load(store, spec, data, name, cfg, sample=(spec.index.verify_sample, run_id, data.corpus.count),
                       new_ids=not resumed)
        written, sample, computed = loaded.points, loaded.sample, loaded.fresh
        compact_cache(cfg)  # merge the vectors the workers cached, for the next run and for search
        timings["load"] = round(time.perf_counter() - mark, 2)
        mark = time.perf_counter()
        index = store.build_index(name, hnsw(spec, data.corpus.count), timeout=spec.index.green_timeout)
        timings["index"] = round(time.perf_counter() - mark, 2)

    _faults.hit("index.verify", collection=name)
    mark = time.perf_counter()
    try:
        checks = _verify(store, name, spec, data, model["path"], seed=run_id, encoder=fresh, sample=sample,
                         computed=computed)
    except IndexingError as exc:
        cols.update_stamp(store, name, state="failed", error=str(exc)[:500])
        raise IndexingError(f"{exc}. The alias {cols.alias_name(spec)!r} still points at {live or 'nothing'}; the "
                            f"new collection {name} is kept for inspection") from None
    timings["verify"] = round(time.perf_counter() - mark, 2)
    cols.update_stamp(store, name, state=state, verified=checks, index=index, **(extra or {}))
    return {"name": name, "points": checks["points"], "written": written, "dimension": dimension, "model": model,
            "resumed": resumed, "reused": reuse, "verified": checks, "index": index,
            "seconds": round(time.perf_counter() - start, 2), "timings": timings}


def _check_space(where: Target, data: DomainData, dimension: int) -> None:
    """Refuse a build the embedded engine's disk cannot hold, before anything is encoded.

    Measured on Qdrant Edge (50,000 384-d points): the loaded segment takes ~1.07x the raw vectors
    plus the payloads, the WAL keeps ~35 MiB, and while `optimize()` writes the indexed segment both
    exist: about 2.2x (vectors + payloads) at the peak.
    """
    from vectune.index.edge import DiskFull, MIN_FREE, free_bytes

    try:
        payload = Path(data.corpus.path).stat().st_size
    except (OSError, TypeError):  # not one local file: count the vectors only
        payload = 0
    need = int(2.2 * (data.corpus.count * dimension * 4 + payload)) + MIN_FREE
    folder = Path(where.path)
    free = free_bytes(folder)
    if free < need:
        raise DiskFull(f"a new collection of {data.corpus.count} {dimension}-d points needs about {need / 2**20:.0f} "
                       f"MiB under {folder} while it is built and indexed, and {free / 2**20:.0f} MiB are free: free "
                       "some space (older versions kept for rollback: index.keep), or point index.qdrant.path at a "
                       "larger disk")


def _prepare(store: Store, spec: Spec, name: str, stamp: dict, *, live: str | None) -> bool:
    """Create the collection for the bulk load (no HNSW until `build_index`), or resume a half-built one.

    Returns True when resuming. A leftover of this run id built from another model or
    corpus is dropped and rebuilt, unless it is live.
    """
    if store.exists(name):
        old = store.read_stamp(name)
        if old is None:
            raise IndexingError(f"collection {name} exists and was not made by vectune; use another run id")
        same = all(old.get(k) == stamp[k] for k in ("format", "model_fingerprint", "corpus_sha256", "corpus_reading",
                                                    "dimension", "distance", "document_prefix", "max_seq_length",
                                                    "normalize"))
        if same:
            log.info("resuming %s (%s, %d points so far)", name, old.get("state"), store.count(name))
            store.write_stamp(name, {**stamp, "created": old.get("created", stamp["created"]),
                                     "state": "ready" if name == live else "building"})
            return True
        if name == live:
            raise IndexingError(f"{name} is live and was built from another model or corpus; use a new run id")
        log.info("dropping %s: it was built from another model or corpus", name)
        store.drop(name)
    store.create(name, layout(spec, stamp["dimension"], stamp["corpus_count"], sparse=spec.index.sparse == "bm25"),
                 stamp=stamp)
    return False


def corpus_rows(spec: Spec, data: DomainData, plan) -> tuple:
    """(lazy Dataset of the corpus with its content hashes, the Ray batch size for the encoder
    pool, the number of read blocks): blocks of one batch each, in a multiple of `plan`'s actor
    count, so every encoder actor gets an equal share (`corpus_batching`, as the mine's pool).
    The pool gathers whole blocks until they hold a batch: SciFact's 6 blocks of 864 under the
    batch of 1,024 went in pairs, 3 tasks for 2 actors, and one actor encoded 2/3 of the corpus
    (the re-index ran at 15.4 documents/s where the mine's balanced pool ran at 22-28). The hash
    map takes the blocks as they come (`batch_size=None`: one block a call)."""
    batch, blocks = corpus_batching(data.corpus.count, spec.index.embed_batch_size, plan.actors)
    ds = data.corpus_dataset(blocks=blocks).map_batches(add_content_hash, batch_format="numpy", batch_size=None,
                                                        num_cpus=0.1)
    return ds, batch, blocks


def corpus_vectors(spec: Spec, data: DomainData, cfg, progress=None, *, mark_fresh: bool = False) -> tuple:
    """(lazy Dataset of the payload fields plus `embedding`, its number of read blocks);
    `mark_fresh` adds the `encoder.FRESH` column."""
    idx = spec.index
    plan = plan_actors(idx.concurrency, idx.num_gpus)
    ds, batch, blocks = corpus_rows(spec, data, plan)
    if in_driver(spec.runtime.driver_encode_max, data.corpus.count, plan):  # a small corpus on one machine
        return embed_here(ds, cfg, keep=kept_columns(spec), progress=progress, mark_fresh=mark_fresh), blocks
    embedded = embed_dataset(ds, cfg, plan, batch_size=batch, keep=kept_columns(spec), progress=progress,
                             preload=expects_encoding(cfg, data.corpus.count), mark_fresh=mark_fresh)
    return embedded, blocks


def _load(store: Store, spec: Spec, data: DomainData, name: str, cfg, *, sample: tuple[int, str, int] | None = None,
          new_ids: bool = False):
    """Stream the corpus through the encoder actors into the store (`writer.Written`: the points
    written, and the verification sample `sample` = (k, seed, rows) drawn on the way, with the vectors
    of those the encoders computed rather than read from the cache). `new_ids`: the collection was
    just created (not a resumed build), so no point is stored yet."""
    from vectune.index.writer import write_dataset, write_failure

    idx = spec.index
    try:
        with track("re-embed corpus", data.corpus.count) as counter:
            embedded, blocks = corpus_vectors(spec, data, cfg, progress=counter, mark_fresh=sample is not None)
            return write_dataset(embedded, store, name, batch_size=idx.batch_size, payload=payload_fields(spec),
                                 parallel=idx.parallel, blocks=blocks, bm25=bm25_settings(spec), sample=sample,
                                 new_ids=new_ids)
    except Exception as exc:  # noqa: BLE001 - a Ray-wrapped worker error: keep its last line
        raise IndexingError(f"loading {name} failed: {write_failure(store.where, exc)}") from exc


def _verify(store, name, spec, data, model_path, *, seed, encoder, sample=None, computed=None):
    from vectune.index.verify import verify

    return verify(store, name, spec, data, model_path, seed=seed, encoder=encoder, sample=sample, computed=computed)
