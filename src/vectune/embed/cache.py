"""An embedding cache keyed by model fingerprint and document-text hash.

Layout under `<runs>/_cache/embeddings/<key>/`, where `key` hashes the model fingerprint
and every setting that changes a vector (max_seq_length, prefix, normalisation):

    store/vectors.f32   float32 vectors, raw, in the order they were added (read by row on lookup)
    store/index.bin     a 32-byte header (magic, count, dim) and one 16-byte record (text hash,
                        row in vectors.f32) per stored vector, sorted by hash: replaced
                        atomically, so a reader sees a whole index
    pending/*.npz       new vectors written by encoder workers, merged by `compact()`

A compaction appends the new vectors to `vectors.f32` and then replaces the index, a bounded
group of pending shards at a time: the stored index is streamed past the group's hashes in
chunks (`_MERGE_ROWS`), never loaded whole, so the compacting process (the driver) holds the
same few MiB whatever the store's size. Nothing already stored is read or rewritten but the
index's 16 bytes a vector. (Stores written before, `store/index.npz`, or `store/hashes.npy` +
`vectors.npy` in hash order, are read as they are and converted by their next compaction.)

Readers load the index (16 bytes a text) on their first lookup; opening a cache or counting it
reads only the header and the pending shards' hashes. Vectors stay on disk, and a lookup reads
the rows it needs with `pread` (`_RowFile`), so a reader's memory never holds more of them than
one lookup's.
The folder must be visible to every node that encodes (a shared mount on a cluster).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np

#: vectors copied at a time when a compaction converts a store of the earlier layout
_COPY_ROWS = 16384
#: index records streamed at a time when a compaction merges new hashes into the index
_MERGE_ROWS = 65_536
#: pending hashes merged into the index at a time (a group of whole shards, at least one)
_GROUP_ROWS = 65_536


def text_hashes(texts) -> np.ndarray:
    """64-bit content hashes of texts (blake2b)."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little") for t in texts),
        dtype=np.uint64,
        count=len(texts),
    )


def cache_key(fingerprint: str, *, max_seq_length: int | None, prefix: str, normalize: bool,
              precision: str = "fp32") -> str:
    # fp32 keys are those written before `precision` existed: their caches stay valid
    parts = [fingerprint, max_seq_length, prefix, normalize] + ([precision] if precision != "fp32" else [])
    blob = json.dumps(parts).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


class _RowFile:
    """The rows of a float32 matrix stored raw in a file from byte `offset` on, read with `pread`
    (`rows[array_of_row_numbers]`, runs of consecutive rows in one call): the process holds only
    the rows it asked for. A memory map would read the same, but every page a lookup touched
    stays mapped and counts in the reader's RSS: in a cached re-index of 1M documents each encoder
    actor grew by most of the 1.5 GB file (benchmarks/cache_rss.py)."""

    def __init__(self, path: Path, count: int, dim: int, offset: int = 0):
        self.path, self.shape, self.offset = Path(path), (int(count), int(dim)), int(offset)

    @classmethod
    def of_npy(cls, path: Path) -> "_RowFile":
        """An `.npy` file of float32 rows (C order), past its header."""
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(fh)
            if dtype != np.float32 or fortran or len(shape) != 2:
                raise ValueError(f"{path}: expected a C-order float32 matrix, found {dtype} {shape}")
            return cls(path, shape[0], shape[1], fh.tell())

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        dim = self.shape[1]
        out = np.empty((len(rows), dim), dtype=np.float32)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= self.shape[0]:
            raise IndexError(f"rows outside 0..{self.shape[0] - 1} of {self.path}")
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        starts = np.flatnonzero(np.diff(ordered, prepend=ordered[0] - 2) != 1)  # each run of consecutive rows
        ends = np.append(starts[1:], len(ordered))
        width = dim * 4
        got = np.empty_like(out)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for a, b in zip(starts.tolist(), ends.tolist()):
                view, at, done = memoryview(got[a:b]).cast("B"), self.offset + int(ordered[a]) * width, 0
                while done < len(view):  # straight into the result; a short read goes on where it stopped
                    n = os.preadv(fd, [view[done:]], at + done)
                    if n == 0:
                        raise OSError(f"{self.path}: ends before row {int(ordered[b - 1])}")
                    done += n
        finally:
            os.close(fd)
        out[order] = got
        return out


class _IndexFile:
    """`store/index.bin`: a header (magic, count, dim, 0) and `count` records (text hash, row),
    sorted by hash. Read whole by a reader's first lookup, in chunks by a compaction."""

    MAGIC = b"VTCACHE1"
    HEADER = 32
    RECORD = np.dtype([("hash", "<u8"), ("row", "<i8")])

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            head = fh.read(self.HEADER)
        if len(head) != self.HEADER or head[:8] != self.MAGIC:
            raise ValueError(f"{self.path}: not an embedding cache index")
        self.count, self.dim = (int(v) for v in np.frombuffer(head[8:24], dtype="<i8"))

    def read(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, rows) of records `start`..`stop`, as two contiguous arrays."""
        stop = self.count if stop is None else min(stop, self.count)
        records = np.fromfile(self.path, dtype=self.RECORD, count=max(0, stop - start),
                              offset=self.HEADER + start * self.RECORD.itemsize)
        return np.ascontiguousarray(records["hash"]), np.ascontiguousarray(records["row"])

    def chunks(self, size: int | None = None):
        size = size or _MERGE_ROWS
        for start in range(0, self.count, size):
            yield self.read(start, start + size)

    def members(self, hashes: np.ndarray) -> np.ndarray:
        """Which of the sorted `hashes` are in the index, streaming it in chunks."""
        out = np.zeros(len(hashes), dtype=bool)
        for h, _ in self.chunks():
            lo, hi = int(np.searchsorted(hashes, h[0], "left")), int(np.searchsorted(hashes, h[-1], "right"))
            if hi > lo:
                out[lo:hi] = _member(hashes[lo:hi], h)
        return out

    @classmethod
    def write(cls, path: Path, pieces, count: int, dim: int) -> None:
        """Write (hashes, rows) pieces, already in hash order, `count` records in all, to a new
        file, fsync it and rename it over `path` (readers see the old index or the new)."""
        tmp = path.parent / f".index-{uuid.uuid4().hex}.bin"
        written = 0
        with open(tmp, "wb") as fh:
            fh.write(cls.MAGIC + np.array([count, dim or 0, 0], dtype="<i8").tobytes())
            for h, r in pieces:
                records = np.empty(len(h), dtype=cls.RECORD)
                records["hash"], records["row"] = h, r
                fh.write(records.tobytes())
                written += len(h)
            fh.flush()
            os.fsync(fh.fileno())
        if written != count:
            tmp.unlink(missing_ok=True)
            raise AssertionError(f"index of {count} records got {written}")
        os.replace(tmp, path)


class EmbeddingCache:
    """Look up and add vectors by text hash. Safe for many writers; compaction is single-writer."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.pending = self.root / "pending"
        self.pending.mkdir(parents=True, exist_ok=True)
        self._hashes: np.ndarray | None = None
        self._vectors: _RowFile | None = None
        self._load()

    @property
    def index_path(self) -> Path:
        """The file a compaction replaces last: its change time says the store changed."""
        return self.root / "store" / "index.bin"

    def _load(self) -> None:
        """The store's header (count, dim) and the pending shards' hashes; the index itself on
        the first lookup (`_index`)."""
        store = self.root / "store"
        self._hashes = self._rows = self._vectors = None
        self._stored, self._dim = 0, None
        if self.index_path.exists():
            head = _IndexFile(self.index_path)
            self._stored, self._dim = head.count, head.dim
        elif (store / "index.npz").exists() or (store / "hashes.npy").exists():  # earlier layouts
            self._index()
            self._stored = len(self._hashes)
        # pending shards (written since the last compaction: small, merged after every stage)
        # are visible too, held apart from the store, whose vectors stay on disk. Their hashes
        # are read on the first lookup or count (`_pending_index`), their vectors on the first
        # lookup that needs them; a compaction reads neither here: it streams them a group at a time
        self._pending_parts = sorted(self.pending.glob("*.npz"))
        self._pending_hashes = self._pending_vectors = self._pending_first = None

    def _index(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(sorted hashes, their rows) of the store, read once, with the vectors' `_RowFile`."""
        if self._hashes is not None:
            return self._hashes, self._rows
        store = self.root / "store"
        if self.index_path.exists():
            index = _IndexFile(self.index_path)
            self._hashes, self._rows = index.read()
            if index.count:
                self._vectors = _RowFile(store / "vectors.f32", index.count, index.dim)
        elif (store / "index.npz").exists():  # the layout before index.bin
            with np.load(store / "index.npz") as z:
                self._hashes, self._rows = z["hashes"], z["rows"]
                count, dim = int(z["count"]), int(z["dim"])
            if count:
                self._vectors = _RowFile(store / "vectors.f32", count, dim)
        elif (store / "hashes.npy").exists():  # the first layout: vectors in hash order
            self._hashes = np.load(store / "hashes.npy")
            self._vectors = _RowFile.of_npy(store / "vectors.npy")
            self._rows = np.arange(len(self._hashes), dtype=np.int64)
        return self._hashes, self._rows

    def _pending_arrays(self, key: str) -> list[np.ndarray] | None:
        """`key` ("hashes" or "vectors") of every pending shard listed when the cache was opened,
        or None when one was merged into the store meanwhile (a compaction elsewhere): the cache
        is then opened again."""
        out = []
        try:
            for part in self._pending_parts:
                with np.load(part) as z:
                    out.append(z[key])
        except FileNotFoundError:
            self._load()
            return None
        return out

    def _pending_index(self) -> np.ndarray | None:
        """The pending shards' distinct hashes, sorted (read once, when first needed)."""
        if self._pending_hashes is None and self._pending_parts:
            hs = self._pending_arrays("hashes")
            if hs is None:
                return self._pending_index()
            self._pending_hashes, self._pending_first = np.unique(np.concatenate(hs), return_index=True)
        return self._pending_hashes

    def _pending(self) -> np.ndarray | None:
        """The pending shards' vectors, in `_pending_hashes` order (read once, when first needed)."""
        if self._pending_vectors is None and self._pending_index() is not None:
            vs = self._pending_arrays("vectors")
            if vs is None:
                return self._pending()
            self._pending_vectors = np.concatenate(vs)[self._pending_first]
        return self._pending_vectors

    def __len__(self) -> int:
        """Texts with a vector: the store's count, plus the pending hashes it lacks (found by
        streaming the index, not by loading it)."""
        if self._pending_index() is None:
            return self._stored
        if not self._stored:
            return len(self._pending_hashes)
        if self._hashes is not None:  # loaded already (by a lookup, or an earlier layout's open)
            known = _member(self._pending_hashes, self._hashes)
        else:
            known = _IndexFile(self.index_path).members(self._pending_hashes)
        return self._stored + int((~known).sum())

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(found mask, vectors of the found hashes in order)."""
        found = np.zeros(len(hashes), dtype=bool)
        vectors = None
        pending = self._pending_index()  # first: a compaction seen meanwhile reloads the store
        stored_hashes, stored_rows = self._index() if self._stored else (None, None)
        stored_vectors = self._vectors
        for known, rows, stored in ((stored_hashes, stored_rows, lambda: stored_vectors),
                                    (pending, None, self._pending)):
            if known is None or len(known) == 0:
                continue
            pos = np.minimum(np.searchsorted(known, hashes), len(known) - 1)
            here = (known[pos] == hashes) & ~found
            if not here.any():
                continue
            stored = stored()
            if stored is None:  # the pending shards were merged meanwhile: missed, encoded again
                continue
            if vectors is None:
                vectors = np.zeros((len(hashes), stored.shape[1]), dtype=np.float32)
            at = pos[here] if rows is None else rows[pos[here]]
            vectors[here] = np.asarray(stored[at])
            found |= here
        if not found.any():
            return found, None
        return found, vectors[found]

    def add(self, hashes: np.ndarray, vectors: np.ndarray) -> None:
        """Write new vectors as a pending shard (atomic rename, any process)."""
        if len(hashes) == 0:
            return
        tmp = self.pending / f".{uuid.uuid4().hex}.tmp.npz"
        np.savez(tmp, hashes=hashes.astype(np.uint64), vectors=vectors.astype(np.float32))
        os.replace(tmp, self.pending / f"{uuid.uuid4().hex}.npz")

    def compact(self) -> int:
        """Merge pending shards into the store; returns the number of vectors stored.

        A group of whole shards at a time (`_GROUP_ROWS` hashes): the group's vectors whose hash
        the store lacks (the first of each) are appended to `vectors.f32`, one shard in memory at
        a time, then the index is rewritten by streaming the stored one past the group's sorted
        hashes (`_MERGE_ROWS` records at a time) and renamed over the old one, and the group's
        shards are deleted. The memory is one group's and one chunk's, whatever the store's size.
        A hash in both keeps the stored vector. A compaction that dies leaves unindexed rows at
        the end of the file, cut by the next one (readers never look past their index's rows),
        or shards whose vectors are already stored, which the next one skips."""
        parts = sorted(self.pending.glob("*.npz"))
        if not parts:
            return len(self)
        store = self.root / "store"
        store.mkdir(exist_ok=True)
        if not self.index_path.exists():
            if (store / "index.npz").exists():
                self._from_npz(store)
            elif (store / "hashes.npy").exists():
                self._convert(store)
        group, size = [], 0
        for part in parts:
            with np.load(part) as z:
                hashes = z["hashes"].astype(np.uint64)
            group.append((part, hashes))
            size += len(hashes)
            if size >= _GROUP_ROWS:
                self._merge(store, group)
                group, size = [], 0
        if group:
            self._merge(store, group)
        self._load()
        return len(self)

    def _merge(self, store: Path, group: list[tuple[Path, np.ndarray]]) -> None:
        """One group of pending shards into the store (see `compact`)."""
        index = _IndexFile(self.index_path) if self.index_path.exists() else None
        count, dim = (index.count, index.dim) if index else (0, None)
        pending_h = np.concatenate([h for _, h in group])
        unique, first = np.unique(pending_h, return_index=True)
        if index is not None:
            first = first[~index.members(unique)]
        first = np.sort(first)  # new hashes, in arrival order
        keep = np.zeros(len(pending_h), dtype=bool)
        keep[first] = True
        if len(first):
            with open(store / "vectors.f32", "ab") as fh:
                pass  # exists from here on
            with open(store / "vectors.f32", "r+b") as fh:
                start = 0
                for part, hashes in group:
                    take = keep[start:start + len(hashes)]
                    start += len(hashes)
                    if not take.any():
                        continue
                    with np.load(part) as z:
                        v = np.ascontiguousarray(z["vectors"][take], dtype=np.float32)
                    if dim is None:
                        dim = v.shape[1]
                    if fh.tell() == 0:
                        fh.truncate(count * dim * 4)  # rows a dead compaction appended: never indexed
                        fh.seek(count * dim * 4)
                    fh.write(v.tobytes())
                fh.flush()
                os.fsync(fh.fileno())
            new_h = pending_h[first]
            new_rows = np.arange(count, count + len(first), dtype=np.int64)
            order = np.argsort(new_h)
            _IndexFile.write(self.index_path, _merged(index, new_h[order], new_rows[order]),
                             count + len(first), dim)
        for part, _ in group:
            part.unlink(missing_ok=True)

    def _from_npz(self, store: Path) -> None:
        """The layout before `index.bin` (`index.npz`, the same records as two arrays): its
        index rewritten once; the vectors file is the same."""
        with np.load(store / "index.npz") as z:
            hashes, rows, count, dim = z["hashes"], z["rows"], int(z["count"]), int(z["dim"])
        _IndexFile.write(self.index_path, [(hashes, rows)], count, dim)
        (store / "index.npz").unlink(missing_ok=True)

    def _convert(self, store: Path) -> None:
        """A store of the first layout (hashes.npy + vectors.npy in hash order) into this one:
        its vectors copied once, in order, chunk by chunk (plain reads: no map holds the store)."""
        hashes = np.load(store / "hashes.npy")
        old = _RowFile.of_npy(store / "vectors.npy")
        (count, dim) = old.shape
        with open(old.path, "rb") as src:
            src.seek(old.offset)
            with open(store / "vectors.f32", "wb") as dst:
                left = count * dim * 4
                while left:
                    chunk = src.read(min(left, _COPY_ROWS * dim * 4))
                    dst.write(chunk)
                    left -= len(chunk)
                dst.flush()
                os.fsync(dst.fileno())
        _IndexFile.write(self.index_path, [(hashes, np.arange(len(hashes), dtype=np.int64))], count, dim)
        (store / "hashes.npy").unlink(missing_ok=True)
        (store / "vectors.npy").unlink(missing_ok=True)


def _merged(index: "_IndexFile | None", new_h: np.ndarray, new_rows: np.ndarray):
    """The stored index's records and the new ones (sorted, none already stored), in hash
    order, a chunk of the stored index at a time."""
    at = 0
    for h, r in (index.chunks() if index is not None else ()):
        cut = int(np.searchsorted(new_h, h[-1], "right"))
        if cut > at:
            hh, rr = np.concatenate([h, new_h[at:cut]]), np.concatenate([r, new_rows[at:cut]])
            order = np.argsort(hh, kind="stable")
            h, r = hh[order], rr[order]
            at = cut
        yield h, r
    if at < len(new_h):
        yield new_h[at:], new_rows[at:]


def store_stamp(root: str | Path) -> int | None:
    """The change time (ns) of the store's index, whichever layout holds it, or None: a new
    value means a compaction replaced the store since."""
    store = Path(root) / "store"
    for name in ("index.bin", "index.npz", "hashes.npy"):
        try:
            return (store / name).stat().st_mtime_ns
        except FileNotFoundError:
            continue
    return None


def _member(values: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """Which of `values` are in the sorted array `sorted_values`."""
    if len(sorted_values) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return sorted_values[pos] == values
