"""The embedded engine: Qdrant Edge (`qdrant-edge-py`), Qdrant's own engine in this process.

Edge has shards, not collections, aliases or collection metadata. vectune's folder
(`index.qdrant.path`):

    vectune-store.json             what wrote the folder (this layout, the engine's version)
    collections/<name>/shard/      one Edge shard per collection version
    collections/<name>/version.json  its vectors, HNSW settings, index build and the vectune stamp
    aliases/<alias>.json           {"collection": ...}: the version readers query

The alias and version records are replaced atomically (written to a temporary file, fsynced,
renamed over the old one, the folder fsynced): a reader, which resolves the alias on every open,
sees the old record or the new one, never a torn or missing one, even when the writer is killed
mid-way. A collection is dropped by renaming its folder out of sight, then deleting it.

Edge lets one process open a shard at a time (its WAL is locked): a shard being written (a re-index
owner, a sync) cannot be searched meanwhile; the others can. Shards open on first use and stay open
until `close()`.

Edge writes through memory-mapped files: on a full disk a write does not fail, the process dies
of SIGBUS (shown in `tests/integration/test_reliability.py`). So every write, index build and
shard open first checks the free space it needs (`DiskFull`, a clear error) instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from vectune import _faults
from vectune.errors import EXIT_BAD_INPUT, IndexingError
from vectune.index.store import (DENSE, FUSIONS, MEMORY, PAGE, RRF_K, SPARSE, Hit, Hnsw, Layout, Record, Sparse,
                                 Target, pages)

log = logging.getLogger(__name__)

MARKER = "vectune-store.json"
LAYOUT = 1
#: free space kept in hand beyond what a write needs: Edge's WAL grows in 32 MiB segments
MIN_FREE = 64 << 20
#: Qdrant's default: segments under this many KiB of vectors are searched exactly, without HNSW
FULL_SCAN_THRESHOLD = 10_000
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_DISTANCES = {"cosine": "Cosine", "dot": "Dot", "euclid": "Euclid"}


class OldStoreError(IndexingError):
    """The embedded folder holds a store an older vectune wrote with qdrant-client's local mode (exit 2)."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, folder: str, spec_source: str | None = None):
        self.folder = folder
        self.spec_source = spec_source
        spec = spec_source or "SPEC"
        super().__init__(
            f"{folder} holds a Qdrant store written by an older vectune (qdrant-client's local mode: meta.json, "
            f"collection/*/storage.sqlite); this vectune's embedded engine is Qdrant Edge and cannot read it. "
            f"Nothing was changed or deleted. Rebuild the index into a fresh folder: `vectune reindex {spec} --full "
            f"--set index.qdrant.path={folder}-edge` (and keep that setting), or move {folder} away and run "
            f"`vectune reindex {spec}`")

    def __reduce__(self):  # survives pickling (raised in a Ray actor, re-raised on the driver)
        return (type(self), (self.folder, self.spec_source))


class DiskFull(IndexingError):
    """Too little free space to write safely (Edge would die of SIGBUS rather than fail)."""


def is_old_store(folder: Path) -> bool:
    """Whether `folder` was written by qdrant-client's local mode (vectune before Qdrant Edge)."""
    return (folder / "meta.json").is_file() or any((folder / "collection").glob("*/storage.sqlite"))


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def write_json(path: Path, value: dict, *, fault: str | None = None) -> None:
    """Replace `path` with `value` atomically and durably: temp file, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(value, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        if fault:
            _faults.hit(fault, path=str(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise IndexingError(f"cannot read {path}: {exc}") from None
    return value if isinstance(value, dict) else None


def _edge():
    import qdrant_edge

    return qdrant_edge


def engine_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qdrant-edge-py")
    except PackageNotFoundError:  # pragma: no cover - a source build
        return "unknown"


def _config(layout: Layout):
    """The Edge shard config of `layout`: its named dense (and BM25 sparse) vectors and its HNSW
    settings, for creating a shard and for loading one with other HNSW settings."""
    qe = _edge()
    h, cold = layout.hnsw, qe.Memory.Cold
    return qe.EdgeConfig(
        vectors={DENSE: qe.EdgeVectorParams(size=layout.size, distance=getattr(qe.Distance, _DISTANCES[layout.distance]),
                                            memory=cold if layout.on_disk else None)},
        sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)} if layout.sparse else None,
        hnsw_config=qe.HnswIndexConfig(m=h.m, ef_construct=h.ef_construct, full_scan_threshold=FULL_SCAN_THRESHOLD,
                                       memory=cold if h.on_disk else None))


def _reason(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


class EdgeStore:
    """vectune's store on Qdrant Edge in a local folder (see the module docstring).

    Args:
        where: the target; `where.path` is the folder (created if missing), or `:memory:` for a
            temporary folder removed on `close()`.
        spec_source: the spec file, named in the message for an older vectune's folder.

    Raises:
        OldStoreError: the folder holds an older vectune's store (nothing is touched).
        IndexingError: the folder cannot be made or read.
    """

    def __init__(self, where: Target, *, spec_source: str | None = None):
        self.where = where
        self._temporary = where.path == MEMORY
        root = Path(tempfile.mkdtemp(prefix="vectune-edge-") if self._temporary else str(where.path))
        if root.is_dir() and is_old_store(root):
            raise OldStoreError(str(root), spec_source)
        try:
            (root / "collections").mkdir(parents=True, exist_ok=True)
            (root / "aliases").mkdir(exist_ok=True)
            if not (root / MARKER).exists():
                write_json(root / MARKER, {"layout": LAYOUT, "engine": "qdrant-edge-py",
                                           "engine_version": engine_version()})
        except OSError as exc:  # a file where the folder should be, no permission, a read-only disk
            raise IndexingError(f"cannot open the embedded Qdrant at {root} (index.qdrant.path): "
                                f"{exc.strerror or exc}") from None
        marker = read_json(root / MARKER) or {}
        if marker.get("layout", LAYOUT) > LAYOUT:
            raise IndexingError(f"{root} was written by a newer vectune (store layout {marker.get('layout')}); "
                                "upgrade vectune to read it")
        self.root = root
        self._shards: dict[str, object] = {}

    def describe(self) -> str:
        return f"embedded engine (Qdrant Edge) at {self.root}"

    # -- folders and records -------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        if not _NAME.match(name):
            raise IndexingError(f"{name!r} cannot name a collection: use letters, digits, `_` and `-`")
        return self.root / "collections" / name

    def _record(self, name: str) -> dict:
        record = read_json(self._dir(name) / "version.json")
        if record is None:
            raise IndexingError(f"no collection {name!r} in {self.root}")
        return record

    def _ensure_space(self, need: int, doing: str) -> None:
        free = free_bytes(self.root)
        if free < need + MIN_FREE:
            raise DiskFull(
                f"not enough free space under {self.root} to {doing}: {free / 2**20:.0f} MiB free, about "
                f"{(need + MIN_FREE) / 2**20:.0f} MiB needed. Qdrant Edge writes through memory-mapped files and "
                "a write to a full disk would kill the process instead of failing: free some space, or point "
                "index.qdrant.path at a larger disk")

    def _shard(self, name: str):
        shard = self._shards.get(name)
        if shard is not None:
            return shard
        folder = self._dir(name) / "shard"
        if not (self._dir(name) / "version.json").exists():
            raise IndexingError(f"no collection {name!r} in {self.root}")
        self._ensure_space(0, f"open {name}")
        try:
            shard = _edge().EdgeShard.load(str(folder))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - Edge raises Exception, and PanicException on a broken segment
            reason = _reason(exc)
            if "WouldBlock" in reason:
                raise IndexingError(
                    f"the shard of {name} ({folder}) is open in another process (a re-index or sync writing it?): "
                    "Qdrant Edge lets one process open a shard at a time (and one store in a process); retry when "
                    "it is done") from None
            raise IndexingError(f"cannot load the shard of {name} ({folder}): {reason}") from None
        self._shards[name] = shard
        return shard

    def _call(self, name: str, what: str, fn):
        """Run an Edge call; its errors, panics of a corrupted segment included, become IndexingError."""
        try:
            return fn(self._shard(name))
        except IndexingError:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - PanicException derives from BaseException
            raise IndexingError(f"{name}: Qdrant Edge failed to {what}: {_reason(exc)}") from exc

    # -- versions --------------------------------------------------------------------------
    def collections(self) -> list[str]:
        folder = self.root / "collections"
        return sorted(p.name for p in folder.iterdir()
                      if not p.name.startswith(".") and (p / "version.json").is_file())

    def exists(self, name: str) -> bool:
        return (self._dir(name) / "version.json").is_file()

    def create(self, name: str, layout: Layout, *, stamp: dict) -> None:
        """A new version: an empty shard, then its record (with the stamp) beside it. The record
        makes it exist: a create killed before it leaves a folder the next create replaces."""
        qe = _edge()
        folder = self._dir(name)
        if self.exists(name):
            raise IndexingError(f"collection {name} already exists in {self.root}")
        self._ensure_space(0, f"create {name}")
        if folder.exists():  # a create that died before its record: nothing of it is usable
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        h = layout.hnsw
        try:
            self._shards[name] = qe.EdgeShard.create(str(folder / "shard"), _config(layout))
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise IndexingError(f"cannot create the shard of {name}: {_reason(exc)}") from None
        write_json(folder / "version.json", {
            "name": name, "created": _now(), "engine": {"qdrant_edge": engine_version()},
            "vectors": {DENSE: {"size": layout.size, "distance": layout.distance, "on_disk": layout.on_disk}},
            "sparse_vectors": {SPARSE: {"modifier": "idf"}} if layout.sparse else {},
            "hnsw": {"m": h.m, "ef_construct": h.ef_construct, "ef": h.ef, "on_disk": h.on_disk},
            "index": None, "vectune": stamp})

    def drop(self, name: str) -> None:
        shard = self._shards.pop(name, None)
        if shard is not None:
            shard.close()
        folder = self._dir(name)
        if not folder.exists():
            return
        for record in (self.root / "aliases").glob("*.json"):  # as a server drops a collection's aliases with it
            if (read_json(record) or {}).get("collection") == name:
                record.unlink(missing_ok=True)
        gone = folder.with_name(f".dropped-{name}-{uuid.uuid4().hex[:8]}")
        os.replace(folder, gone)  # out of sight at once; the files go next
        for leftover in folder.parent.glob(".dropped-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def layout(self, name: str) -> Layout:
        record = self._record(name)
        dense = record["vectors"][DENSE]
        h = record.get("hnsw") or {}
        return Layout(size=int(dense["size"]), distance=str(dense["distance"]).lower(),
                      sparse=SPARSE in (record.get("sparse_vectors") or {}),
                      hnsw=Hnsw(m=h.get("m", 16), ef_construct=h.get("ef_construct", 100), ef=h.get("ef"),
                                on_disk=bool(h.get("on_disk"))),
                      on_disk=bool(dense.get("on_disk")))

    def version_record(self, name: str) -> dict:
        """The whole version record (layout, HNSW settings, index build, stamp)."""
        return self._record(name)

    def read_stamp(self, name: str) -> dict | None:
        record = read_json(self._dir(name) / "version.json")
        stamp = (record or {}).get("vectune")
        return dict(stamp) if isinstance(stamp, dict) else None

    def write_stamp(self, name: str, stamp: dict) -> None:
        record = self._record(name)
        record["vectune"] = stamp
        write_json(self._dir(name) / "version.json", record)

    # -- the alias -------------------------------------------------------------------------
    def _alias_path(self, alias: str) -> Path:
        if not _NAME.match(alias):
            raise IndexingError(f"{alias!r} cannot name an alias: use letters, digits, `_` and `-`")
        return self.root / "aliases" / f"{alias}.json"

    def alias(self, alias: str) -> str | None:
        record = read_json(self._alias_path(alias))
        return str(record["collection"]) if record and record.get("collection") else None

    def swap_alias(self, alias: str, collection: str) -> str | None:
        """Point `alias` at `collection` by replacing its record in one rename; returns the previous one."""
        path = self._alias_path(alias)
        previous = self.alias(alias)
        if previous == collection:
            return previous
        if not self.exists(collection):
            raise IndexingError(f"no collection {collection!r} in {self.root}: the alias {alias!r} cannot point at it")
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed mid-swap
            stale.unlink(missing_ok=True)
        write_json(path, {"alias": alias, "collection": collection, "previous": previous, "swapped": _now()},
                   fault="index.alias")
        return previous

    # -- points ------------------------------------------------------------------------------
    def upsert(self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict],
               sparse: Sequence[Sparse] | None = None) -> int:
        qe = _edge()
        vectors = np.asarray(vectors, dtype=np.float32)
        # WAL + segment: each point twice, its payload (JSON) too
        self._ensure_space(2 * (vectors.nbytes + len(json.dumps(list(payloads)))), f"write to {name}")
        rows = vectors.tolist()
        points = []
        for i, pid in enumerate(ids):
            vector = {DENSE: rows[i]}
            if sparse is not None:
                vector[SPARSE] = qe.SparseVector(list(sparse[i].indices), list(sparse[i].values))
            points.append(qe.Point(pid, vector, dict(payloads[i])))
        self._call(name, "upsert points", lambda s: s.update(qe.UpdateOperation.upsert_points(points)))
        return len(points)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        qe = _edge()
        self._ensure_space(0, f"delete from {name}")
        self._call(name, "delete points", lambda s: s.update(qe.UpdateOperation.delete_points(list(ids))))

    def count(self, name: str, *, has_vector: str | None = None, has_field: str | None = None) -> int:
        qe = _edge()
        must = [qe.HasVectorCondition(has_vector)] if has_vector else None
        must_not = [qe.IsEmptyCondition(has_field)] if has_field else None
        flt = qe.Filter(must=must, must_not=must_not) if (must or must_not) else None
        return int(self._call(name, "count points", lambda s: s.count(qe.CountRequest(exact=True, filter=flt))))

    def scroll_page(self, name: str, fields: Sequence[str] | None, offset: str | None,
                    limit: int) -> tuple[list[Record], str | None]:
        qe = _edge()
        request = qe.ScrollRequest(offset=offset, limit=limit, with_payload=list(fields) if fields else False,
                                   with_vector=False)
        points, after = self._call(name, "scroll points", lambda s: s.scroll(request))
        return [Record(str(p.id), dict(p.payload or {})) for p in points], (None if after is None else str(after))

    def scroll(self, name: str, fields: Sequence[str] | None = None, *, page: int = PAGE) -> Iterator[list[Record]]:
        return pages(self.scroll_page, name, fields, page)

    def retrieve(self, name: str, ids: Sequence[str], fields: Sequence[str] | None = None, *,
                 vectors: bool = False) -> list[Record]:
        got = self._call(name, "retrieve points", lambda s: s.retrieve(
            list(ids), with_payload=list(fields) if fields else False, with_vector=[DENSE] if vectors else False))
        return [Record(str(p.id), dict(p.payload or {}),
                       (p.vector or {}).get(DENSE) if vectors and isinstance(p.vector, dict) else None) for p in got]

    # -- queries and the index ---------------------------------------------------------------
    def _resolve(self, name: str) -> str:
        return self.alias(name) or name

    def _params(self, name: str, ef: int | None):
        ef = ef if ef is not None else self.layout(name).hnsw.ef
        return _edge().SearchParams(hnsw_ef=ef) if ef else None

    def search(self, name: str, vector: Sequence[float], k: int, fields: Sequence[str] | None = None, *,
               ef: int | None = None) -> list[Hit]:
        qe = _edge()
        name = self._resolve(name)
        request = qe.QueryRequest(limit=k, query=qe.Query.Nearest([float(v) for v in vector], using=DENSE),
                                  with_payload=list(fields) if fields else False, params=self._params(name, ef))
        return _hits(self._call(name, "search", lambda s: s.query(request)))

    def hybrid(self, name: str, dense: Sequence[float], sparse: Sparse, k: int, fields: Sequence[str] | None = None,
               *, fusion: str = "rrf", prefetch: int = 100, ef: int | None = None,
               rrf_k: int = RRF_K) -> list[Hit]:
        """Dense and `bm25` sparse candidates (`prefetch` each), fused in the engine (RRF with `rrf_k`, or DBSF)."""
        qe = _edge()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion {fusion!r}: choose from {FUSIONS}")
        name = self._resolve(name)
        if not self.layout(name).sparse:
            raise IndexingError(f"{name} has no `{SPARSE}` sparse vector to search")
        request = qe.QueryRequest(
            limit=k, with_payload=list(fields) if fields else False,
            prefetches=[qe.Prefetch(limit=prefetch, query=qe.Query.Nearest([float(v) for v in dense], using=DENSE),
                                    params=self._params(name, ef)),
                        qe.Prefetch(limit=prefetch, query=qe.Query.Nearest(
                            qe.SparseVector(list(sparse.indices), [float(v) for v in sparse.values]), using=SPARSE))],
            query=qe.Fusion.Rrf(k=rrf_k) if fusion == "rrf" else qe.Fusion.Dbsf())
        return _hits(self._call(name, "run a hybrid query", lambda s: s.query(request)))

    def build_index(self, name: str, hnsw: Hnsw, *, timeout: float = 3600.0) -> dict:
        """Build HNSW over what was loaded (`optimize()`, blocking), record it in the version record,
        and close the shard, so the next reader (verification) loads it from disk.

        Needs about the shard's size again in free space while the optimised segment is written."""
        qe = _edge()
        record = self._record(name)
        size = sum(f.stat().st_size for f in (self._dir(name) / "shard" / "segments").rglob("*") if f.is_file())
        self._ensure_space(size, f"build the index of {name}")
        built_with = record.get("hnsw") or {}
        if (built_with.get("m"), built_with.get("ef_construct")) != (hnsw.m, hnsw.ef_construct):
            # a resumed build whose spec changed its HNSW settings: Edge overwrites the shard's config on load
            shard = self._shards.pop(name, None)
            if shard is not None:
                shard.close()
            self._shards[name] = qe.EdgeShard.load(str(self._dir(name) / "shard"),
                                                   _config(dataclasses.replace(self.layout(name), hnsw=hnsw)))
        record["hnsw"] = {"m": hnsw.m, "ef_construct": hnsw.ef_construct, "ef": hnsw.ef, "on_disk": hnsw.on_disk}
        write_json(self._dir(name) / "version.json", record)
        start = time.perf_counter()
        self._call(name, "build the index", lambda s: s.optimize())
        self._call(name, "flush", lambda s: s.flush())
        info = self._call(name, "describe the shard", lambda s: s.info())
        # closed: whatever reads it next (verification first) loads it from its files, as a reader will
        self._shards.pop(name).close()
        built = {"built": _now(), "seconds": round(time.perf_counter() - start, 2), "points": info.points_count,
                 "indexed_vectors": info.indexed_vectors_count, "segments": info.segments_count,
                 "m": hnsw.m, "ef_construct": hnsw.ef_construct, "ef": hnsw.ef}
        record = self._record(name)
        record["index"] = built
        write_json(self._dir(name) / "version.json", record)
        return built

    def close(self) -> None:
        shards, self._shards = self._shards, {}
        for shard in shards.values():
            try:
                shard.close()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - a panicked shard; closing the others matters more
                log.warning("closing a Qdrant Edge shard: %s", _reason(exc))
        if self._temporary:
            shutil.rmtree(self.root, ignore_errors=True)


def _hits(points) -> list[Hit]:
    return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
