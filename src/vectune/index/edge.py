"""The embedded engine: Qdrant Edge (`qdrant-edge-py`), Qdrant's own engine in this process.

Edge has shards, not collections, aliases or collection metadata. vectune's folder
(`index.qdrant.path`):

    vectune-store.json             what wrote the folder (this layout, the engine's version)
    collections/<name>/shard/      a collection version's Edge shard (its first, when it has several)
    collections/<name>/shard-<k>/  its further shards, when it holds more than `shard_points` points
    collections/<name>/version.json  its vectors, HNSW settings, shards, index build and the vectune stamp
    aliases/<alias>.json           {"collection": ...}: the version readers query

The alias and version records are replaced atomically (written to a temporary file, fsynced,
renamed over the old one, the folder fsynced): a reader, which resolves the alias on every open,
sees the old record or the new one, never a torn or missing one, even when the writer is killed
mid-way. A collection is dropped by renaming its folder out of sight, then deleting it.

A version holds at most `index.shard_points` points per shard (`Layout.shard_points`; None: one
shard). A load fills one shard at a time: when it is full its HNSW graph is built (`optimize()`), it
is closed, and the next one is created, so the process writing a version holds one shard's memory
whatever the corpus size. An update of a point already stored goes to the shard that holds it; a
new point to the last one. A search queries every shard and merges: dense hits by score, and a
hybrid query's two prefetched lists each merged across the shards and then fused (`fuse`), as a
Qdrant server fuses across its shards; with one shard the engine fuses. Each shard computes its
own BM25 IDF (as each shard of a server does).

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
#: 1: one shard per version; 2: versions may hold several (`parts` in their record)
LAYOUT = 2
#: the first (or only) shard folder of a version
PART = "shard"
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
            if not (root / MARKER).exists():  # layout 2 only once a version holds several shards
                write_json(root / MARKER, {"layout": 1, "engine": "qdrant-edge-py",
                                           "engine_version": engine_version()})
        except OSError as exc:  # a file where the folder should be, no permission, a read-only disk
            raise IndexingError(f"cannot open the embedded Qdrant at {root} (index.qdrant.path): "
                                f"{exc.strerror or exc}") from None
        marker = read_json(root / MARKER) or {}
        if marker.get("layout", LAYOUT) > LAYOUT:
            raise IndexingError(f"{root} was written by a newer vectune (store layout {marker.get('layout')}); "
                                "upgrade vectune to read it")
        self.root = root
        self._shards: dict[tuple[str, str], object] = {}  # (version, shard folder): the open shards
        self._fill: dict[str, int] = {}  # points in the last shard of a version this process is writing
        self._sealed: dict[str, float] = {}  # seconds spent building the full shards' graphs during a load

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

    def _parts(self, name: str) -> list[str]:
        """The shard folders of version `name`, the last one open for new points."""
        return _parts(self._record(name))

    def _shard(self, name: str, part: str = PART):
        shard = self._shards.get((name, part))
        if shard is not None:
            return shard
        folder = self._dir(name) / part
        if not (self._dir(name) / "version.json").exists():
            raise IndexingError(f"no collection {name!r} in {self.root}")
        what = f"the shard of {name}" if part == PART else f"shard {part} of {name}"
        self._ensure_space(0, f"open {name}")
        try:
            shard = _edge().EdgeShard.load(str(folder))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - Edge raises Exception, and PanicException on a broken segment
            reason = _reason(exc)
            if "WouldBlock" in reason:
                raise IndexingError(
                    f"{what} ({folder}) is open in another process (a re-index or sync writing it?): "
                    "Qdrant Edge lets one process open a shard at a time (and one store in a process); retry when "
                    "it is done") from None
            raise IndexingError(f"cannot load {what} ({folder}): {reason}") from None
        self._shards[(name, part)] = shard
        return shard

    def _release(self, name: str, part: str) -> None:
        shard = self._shards.pop((name, part), None)
        if shard is not None:
            shard.close()

    def _call(self, name: str, what: str, fn, part: str = PART):
        """Run an Edge call on one shard of `name`; its errors, panics of a corrupted segment
        included, become IndexingError."""
        try:
            return fn(self._shard(name, part))
        except IndexingError:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - PanicException derives from BaseException
            raise IndexingError(f"{name}: Qdrant Edge failed to {what}: {_reason(exc)}") from exc

    def _each(self, name: str, what: str, fn) -> list:
        """`fn` on every shard of `name`, in order. A version of several shards is walked one shard
        at a time: a shard this call opened is closed again before the next one opens, so walking
        (a count, a scroll, an index build) holds one shard's memory whatever the version's size."""
        parts = self._parts(name)
        out = []
        for part in parts:
            opened = (name, part) not in self._shards
            try:
                out.append(self._call(name, what, fn, part))
            finally:
                if opened and len(parts) > 1 and (name, part) != self._open_part(name, parts):
                    self._release(name, part)
        return out

    def _open_part(self, name: str, parts: list[str]) -> tuple[str, str] | None:
        """The shard of `name` this process is filling (kept open), if any."""
        return (name, parts[-1]) if name in self._fill else None

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
            self._shards[(name, PART)] = qe.EdgeShard.create(str(folder / PART), _config(layout))
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise IndexingError(f"cannot create the shard of {name}: {_reason(exc)}") from None
        write_json(folder / "version.json", {
            "name": name, "created": _now(), "engine": {"qdrant_edge": engine_version()},
            "vectors": {DENSE: {"size": layout.size, "distance": layout.distance, "on_disk": layout.on_disk}},
            "sparse_vectors": {SPARSE: {"modifier": "idf"}} if layout.sparse else {},
            "hnsw": {"m": h.m, "ef_construct": h.ef_construct, "ef": h.ef, "on_disk": h.on_disk},
            "shard_points": layout.shard_points, "parts": [PART],
            "index": None, "vectune": stamp})
        self._fill[name] = 0

    def drop(self, name: str) -> None:
        for key in [k for k in self._shards if k[0] == name]:
            self._shards.pop(key).close()
        self._fill.pop(name, None)
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
        return _layout(self._record(name))

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
               sparse: Sequence[Sparse] | None = None, *, new_ids: bool = False) -> int:
        """Write points: a point already stored is replaced in the shard that holds it, a new one
        goes to the version's last shard, which is sealed (indexed, closed) and followed by a new
        one when it holds `shard_points`. `new_ids`: the caller vouches that no id is stored yet
        (a fresh build's load: a corpus's ids are unique), so the points go straight to the last
        shard without looking them up in the sealed ones."""
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
        record = self._record(name)
        limit, parts = record.get("shard_points"), _parts(record)
        if not limit:
            self._write(name, PART, points)
            return len(points)
        new = points
        if not new_ids:  # a sync or a resumed load: some ids may be stored already
            new = []
            held: dict[str, str] = {}
            for part in parts:
                for pid in self._held(name, part, [str(p.id) for p in points if str(p.id) not in held]):
                    held[pid] = part
            for part in parts:
                self._write(name, part, [p for p in points if held.get(str(p.id)) == part])
            new = [p for p in points if str(p.id) not in held]
        fill = self._fill.get(name)
        if fill is None:
            fill = self._call(name, "count points", lambda s: s.count(qe.CountRequest(exact=True)), parts[-1])
        while new:
            if fill >= limit:
                parts, fill = self._seal(name, parts), 0
            take, new = new[:limit - fill], new[limit - fill:]
            self._write(name, parts[-1], take)
            fill += len(take)
        self._fill[name] = fill
        return len(points)

    def _write(self, name: str, part: str, points: list) -> None:
        if points:
            qe = _edge()
            self._call(name, "upsert points", lambda s: s.update(qe.UpdateOperation.upsert_points(points)), part)

    def _held(self, name: str, part: str, ids: list[str]) -> list[str]:
        """Which of `ids` shard `part` of `name` holds."""
        if not ids:
            return []
        got = self._call(name, "look up points", lambda s: s.retrieve(ids, with_payload=False, with_vector=False),
                         part)
        return [str(p.id) for p in got]

    def _seal(self, name: str, parts: list[str]) -> list[str]:
        """Build the graph of the full last shard of `name`, close it, and start the next one
        (created first, then listed in the version record: a seal killed between the two leaves
        an unlisted folder, replaced by the next seal). Returns the version's shards."""
        qe = _edge()
        last = parts[-1]
        start = time.perf_counter()
        self._ensure_space(_size(self._dir(name) / last / "segments"), f"build the index of {name}")
        self._call(name, "build the index", lambda s: s.optimize(), last)
        self._call(name, "flush", lambda s: s.flush(), last)
        self._release(name, last)
        self._sealed[name] = self._sealed.get(name, 0.0) + time.perf_counter() - start
        part = f"{PART}-{len(parts)}"
        folder = self._dir(name) / part
        if folder.exists():
            shutil.rmtree(folder)
        try:
            self._shards[(name, part)] = qe.EdgeShard.create(str(folder), _config(self.layout(name)))
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise IndexingError(f"cannot create shard {part} of {name}: {_reason(exc)}") from None
        record = self._record(name)
        record["parts"] = parts + [part]
        marker = read_json(self.root / MARKER) or {}
        if marker.get("layout", 1) < LAYOUT:  # an older vectune must not read a version's first shard as all of it
            write_json(self.root / MARKER, {**marker, "layout": LAYOUT})
        write_json(self._dir(name) / "version.json", record)
        log.info("%s: shard %s holds %d points, indexed and closed; writing %s", name, last,
                 record.get("shard_points"), part)
        return record["parts"]

    def delete(self, name: str, ids: Sequence[str]) -> None:
        qe = _edge()
        self._ensure_space(0, f"delete from {name}")
        ids = list(ids)
        self._each(name, "delete points", lambda s: s.update(qe.UpdateOperation.delete_points(ids)))
        if name in self._fill:
            self._fill[name] = None  # counted again at the next write

    def count(self, name: str, *, has_vector: str | None = None, has_field: str | None = None) -> int:
        qe = _edge()
        must = [qe.HasVectorCondition(has_vector)] if has_vector else None
        must_not = [qe.IsEmptyCondition(has_field)] if has_field else None
        flt = qe.Filter(must=must, must_not=must_not) if (must or must_not) else None
        return sum(int(n) for n in self._each(name, "count points",
                                               lambda s: s.count(qe.CountRequest(exact=True, filter=flt))))

    def census(self, name: str) -> dict:
        """What verification checks, in one walk over `name`'s shards (each opened once, one at a
        time, instead of once per count and scroll): its points, those with their dense vector,
        those with a `doc_id`, and the `points.id_checksum` of their ids."""
        from vectune.index.points import checksum_plus, id_checksum

        qe = _edge()
        filters = (None, qe.Filter(must=[qe.HasVectorCondition(DENSE)]),
                   qe.Filter(must_not=[qe.IsEmptyCondition("doc_id")]))

        def one(shard) -> tuple[list[int], tuple[int, int]]:
            counts = [int(shard.count(qe.CountRequest(exact=True, filter=f))) for f in filters]
            ids, offset = (0, 0), None
            while True:
                points, offset = shard.scroll(qe.ScrollRequest(offset=offset, limit=PAGE, with_payload=False,
                                                               with_vector=False))
                ids = checksum_plus(ids, id_checksum(str(p.id) for p in points))
                if offset is None:
                    return counts, ids

        total, ids = [0, 0, 0], (0, 0)
        for counts, part_ids in self._each(name, "check its points", one):
            total = [a + b for a, b in zip(total, counts)]
            ids = checksum_plus(ids, part_ids)
        return {"points": total[0], "with_vector": total[1], "with_doc_id": total[2], "id_checksum": ids}

    def scroll_page(self, name: str, fields: Sequence[str] | None, offset: str | None,
                    limit: int) -> tuple[list[Record], str | None]:
        """One page of `name`'s points. Across several shards the offset is `<shard>:<point id>`,
        and a shard read to its end is closed before the next one opens."""
        qe = _edge()
        parts = self._parts(name)
        k, inner = 0, offset
        if len(parts) > 1 and offset is not None:
            head, _, rest = offset.partition(":")
            k, inner = int(head), rest or None
        while k < len(parts):
            request = qe.ScrollRequest(offset=inner, limit=limit, with_payload=list(fields) if fields else False,
                                       with_vector=False)
            points, after = self._call(name, "scroll points", lambda s: s.scroll(request), parts[k])
            records = [Record(str(p.id), dict(p.payload or {})) for p in points]
            if len(parts) == 1:
                return records, (None if after is None else str(after))
            if after is not None:
                return records, f"{k}:{after}"
            if (name, parts[k]) != self._open_part(name, parts):
                self._release(name, parts[k])
            k, inner = k + 1, None
            if records:
                return records, (f"{k}:" if k < len(parts) else None)
        return [], None

    def scroll(self, name: str, fields: Sequence[str] | None = None, *, page: int = PAGE) -> Iterator[list[Record]]:
        return pages(self.scroll_page, name, fields, page)

    def retrieve(self, name: str, ids: Sequence[str], fields: Sequence[str] | None = None, *,
                 vectors: bool = False, keep_open: bool = True) -> list[Record]:
        """The points of `ids` that `name` holds. The shards it opens stay open for the next
        lookup (a sync's diff asks batch after batch); `keep_open=False` for a one-off read (the
        verification's sample) walks them one open at a time instead, as a count does."""
        out: list[Record] = []
        todo = list(ids)
        parts = self._parts(name)
        for part in parts:
            if not todo:
                break
            opened = (name, part) not in self._shards
            try:
                got = self._call(name, "retrieve points", lambda s: s.retrieve(
                    todo, with_payload=list(fields) if fields else False, with_vector=[DENSE] if vectors else False),
                    part)
            finally:
                if not keep_open and opened and len(parts) > 1 and (name, part) != self._open_part(name, parts):
                    self._release(name, part)
            out.extend(Record(str(p.id), dict(p.payload or {}),
                              (p.vector or {}).get(DENSE) if vectors and isinstance(p.vector, dict) else None)
                       for p in got)
            found = {r.id for r in out}
            todo = [i for i in todo if i not in found]
        return out

    # -- queries and the index ---------------------------------------------------------------
    def _resolve(self, name: str) -> str:
        return self.alias(name) or name

    def _params(self, layout: Layout, ef: int | None):
        ef = ef if ef is not None else layout.hnsw.ef
        return _edge().SearchParams(hnsw_ef=ef) if ef else None

    def _query(self, name: str, parts: list[str], what: str, request) -> list[list]:
        """`request` on every shard of `name` (kept open: a reader queries again)."""
        return [self._call(name, what, lambda s: s.query(request), part) for part in parts]

    def search(self, name: str, vector: Sequence[float], k: int, fields: Sequence[str] | None = None, *,
               ef: int | None = None) -> list[Hit]:
        """The `k` nearest points; across several shards, each shard's `k` merged by score, and
        then the payload `fields` of those `k` read from the shards that hold them."""
        qe = _edge()
        name = self._resolve(name)
        record = self._record(name)  # read once a query: the layout, its `ef` and its shards
        layout, parts = _layout(record), _parts(record)
        several = len(parts) > 1
        request = qe.QueryRequest(limit=k, query=qe.Query.Nearest([float(v) for v in vector], using=DENSE),
                                  with_payload=list(fields) if fields and not several else False,
                                  params=self._params(layout, ef))
        found = self._query(name, parts, "search", request)
        if not several:
            return _hits(found[0])
        best = _ranked(found, k, best_high=layout.distance != "euclid")  # Qdrant scores euclid by distance
        return self._with_payloads(name, parts, best, fields)

    def _with_payloads(self, name: str, parts: list[str], ranked: list[tuple[Hit, int]],
                       fields: Sequence[str] | None) -> list[Hit]:
        """`ranked` (a hit and the index of its shard in `parts`) as hits carrying their payload
        `fields`, read by one lookup on each shard that holds some: a query across shards
        reads only the payloads it returns, not every shard's candidates' (a hybrid query's 100
        prefetched a list: benchmarks/shard_queries.py)."""
        if not fields:
            return [hit for hit, _ in ranked]
        wanted: dict[int, list[str]] = {}
        for hit, where in ranked:
            wanted.setdefault(where, []).append(hit.id)
        payloads: dict[str, dict] = {}
        for where, ids in wanted.items():
            got = self._call(name, "read payloads", lambda s, ids=ids: s.retrieve(
                ids, with_payload=list(fields), with_vector=False), parts[where])
            payloads.update((str(p.id), dict(p.payload or {})) for p in got)
        return [Hit(hit.id, hit.score, payloads.get(hit.id, {})) for hit, _ in ranked]

    def hybrid(self, name: str, dense: Sequence[float], sparse: Sparse, k: int, fields: Sequence[str] | None = None,
               *, fusion: str = "rrf", prefetch: int = 100, ef: int | None = None,
               rrf_k: int = RRF_K) -> list[Hit]:
        """Dense and `bm25` sparse candidates (`prefetch` each), fused (RRF with `rrf_k`, or DBSF):
        in the engine for a version of one shard; across several, each candidate list is gathered
        from every shard first and then fused (`vectune.ranking.fuse`: qdrant-client's fusion),
        as a Qdrant server fuses across its shards."""
        qe = _edge()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion {fusion!r}: choose from {FUSIONS}")
        name = self._resolve(name)
        record = self._record(name)
        layout, parts = _layout(record), _parts(record)
        if not layout.sparse:
            raise IndexingError(f"{name} has no `{SPARSE}` sparse vector to search")
        near = qe.Query.Nearest([float(v) for v in dense], using=DENSE)
        terms = qe.Query.Nearest(qe.SparseVector(list(sparse.indices), [float(v) for v in sparse.values]), using=SPARSE)
        if len(parts) == 1:
            request = qe.QueryRequest(
                limit=k, with_payload=list(fields) if fields else False,
                prefetches=[qe.Prefetch(limit=prefetch, query=near, params=self._params(layout, ef)),
                            qe.Prefetch(limit=prefetch, query=terms)],
                query=qe.Fusion.Rrf(k=rrf_k) if fusion == "rrf" else qe.Fusion.Dbsf())
            return _hits(self._call(name, "run a hybrid query", lambda s: s.query(request), parts[0]))
        from vectune.ranking import fuse

        lists, shard_of = [], {}
        for query, params, best_high in ((near, self._params(layout, ef), layout.distance != "euclid"),
                                         (terms, None, True)):
            request = qe.QueryRequest(limit=prefetch, query=query, params=params, with_payload=False)
            ranked = _ranked(self._query(name, parts, "run a hybrid query", request), prefetch, best_high=best_high)
            shard_of.update((h.id, where) for h, where in ranked)
            lists.append([(h.id, h.score) for h, _ in ranked])
        fused = [(Hit(pid, score, {}), shard_of[pid]) for pid, score in fuse(lists, fusion, limit=k, rrf_k=rrf_k)]
        return self._with_payloads(name, parts, fused, fields)

    def build_index(self, name: str, hnsw: Hnsw, *, timeout: float = 3600.0) -> dict:
        """Build HNSW over what was loaded (`optimize()`, blocking, one shard at a time), record it
        in the version record, and close the shards, so the next reader (verification) loads them
        from disk. Shards sealed during the load were indexed then (`seconds_during_load`).

        Needs about the largest shard's size again in free space while its optimised segment is written."""
        qe = _edge()
        record = self._record(name)
        parts = _parts(record)
        self._ensure_space(max(_size(self._dir(name) / p / "segments") for p in parts), f"build the index of {name}")
        built_with = record.get("hnsw") or {}
        changed = (built_with.get("m"), built_with.get("ef_construct")) != (hnsw.m, hnsw.ef_construct)
        record["hnsw"] = {"m": hnsw.m, "ef_construct": hnsw.ef_construct, "ef": hnsw.ef, "on_disk": hnsw.on_disk}
        write_json(self._dir(name) / "version.json", record)
        start = time.perf_counter()
        points = indexed = segments = 0
        for part in parts:
            if changed:
                # a resumed build whose spec changed its HNSW settings: Edge overwrites the shard's config on load
                self._release(name, part)
                self._shards[(name, part)] = qe.EdgeShard.load(str(self._dir(name) / part),
                                                               _config(dataclasses.replace(self.layout(name), hnsw=hnsw)))
            self._call(name, "build the index", lambda s: s.optimize(), part)
            self._call(name, "flush", lambda s: s.flush(), part)
            info = self._call(name, "describe the shard", lambda s: s.info(), part)
            points, indexed, segments = (points + info.points_count, indexed + info.indexed_vectors_count,
                                         segments + info.segments_count)
            # closed: whatever reads it next (verification first) loads it from its files, as a reader will
            self._release(name, part)
        self._fill.pop(name, None)
        built = {"built": _now(), "seconds": round(time.perf_counter() - start, 2), "points": points,
                 "indexed_vectors": indexed, "segments": segments, "shards": len(parts),
                 "seconds_during_load": round(self._sealed.pop(name, 0.0), 2),
                 "m": hnsw.m, "ef_construct": hnsw.ef_construct, "ef": hnsw.ef}
        record = self._record(name)
        record["index"] = built
        write_json(self._dir(name) / "version.json", record)
        return built

    def close(self) -> None:
        shards, self._shards = self._shards, {}
        self._fill.clear()
        for shard in shards.values():
            try:
                shard.close()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - a panicked shard; closing the others matters more
                log.warning("closing a Qdrant Edge shard: %s", _reason(exc))
        if self._temporary:
            shutil.rmtree(self.root, ignore_errors=True)


def _layout(record: dict) -> Layout:
    """The `Layout` a version record describes."""
    dense = record["vectors"][DENSE]
    h = record.get("hnsw") or {}
    return Layout(size=int(dense["size"]), distance=str(dense["distance"]).lower(),
                  sparse=SPARSE in (record.get("sparse_vectors") or {}),
                  hnsw=Hnsw(m=h.get("m", 16), ef_construct=h.get("ef_construct", 100), ef=h.get("ef"),
                            on_disk=bool(h.get("on_disk"))),
                  on_disk=bool(dense.get("on_disk")), shard_points=record.get("shard_points"))


def _parts(record: dict) -> list[str]:
    """The shard folders a version record lists (an older record: its one shard)."""
    return list(record.get("parts") or [PART])


def _ranked(found: list[list], k: int, *, best_high: bool) -> list[tuple[Hit, int]]:
    """The best `k` of several shards' hits, by score (highest first unless `best_high` is False),
    each with the index of the shard that holds it."""
    hits = [(hit, where) for where, points in enumerate(found) for hit in _hits(points)]
    return sorted(hits, key=lambda h: h[0].score, reverse=best_high)[:k]


def _size(folder: Path) -> int:
    """Bytes of the files under `folder` (a shard's `segments`: what `optimize()` writes again;
    its WAL is not copied)."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _hits(points) -> list[Hit]:
    return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
