"""An embedding cache keyed by model fingerprint and document-text hash.

Layout under `<runs>/_cache/embeddings/<key>/`, where `key` hashes the model fingerprint
and every setting that changes a vector (max_seq_length, prefix, normalisation):

    store/vectors.f32   float32 vectors, raw, in the order they were added (read by row on lookup)
    store/index.npz     sorted uint64 text hashes, each one's row in vectors.f32, the rows in use
                        and the dimension: replaced atomically, so a reader sees a whole index
    pending/*.npz       new vectors written by encoder workers, merged by `compact()`

A compaction appends the new vectors to `vectors.f32` and then replaces the index: it reads and
writes only what is new, whatever the store's size, and readers holding the old index never look
past its rows. (Stores written before, `store/hashes.npy` + `vectors.npy` in hash order, are read
as they are and converted by their next compaction.)

Readers keep only the hashes and rows in memory (16 bytes a text); vectors stay on disk, and a
lookup reads the rows it needs with `pread` (`_RowFile`), so a reader's memory never holds more
of them than one lookup's.
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
        return self.root / "store" / "index.npz"

    def _load(self) -> None:
        store = self.root / "store"
        self._hashes = self._rows = self._vectors = None
        if self.index_path.exists():
            with np.load(self.index_path) as z:
                self._hashes, self._rows = z["hashes"], z["rows"]
                count, dim = int(z["count"]), int(z["dim"])
            if count:
                self._vectors = _RowFile(store / "vectors.f32", count, dim)
        elif (store / "hashes.npy").exists():  # the earlier layout: vectors in hash order
            self._hashes = np.load(store / "hashes.npy")
            self._vectors = _RowFile.of_npy(store / "vectors.npy")
            self._rows = np.arange(len(self._hashes), dtype=np.int64)
        # pending shards (written since the last compaction: small, merged after every stage)
        # are visible too, held apart from the store, whose vectors stay on disk. Only their
        # hashes are read here; their vectors on the first lookup that needs them (a compaction
        # never does: it streams them)
        self._pending_parts = sorted(self.pending.glob("*.npz"))
        self._pending_hashes = self._pending_vectors = self._pending_first = None
        if self._pending_parts:
            hs = []
            for part in self._pending_parts:
                with np.load(part) as z:
                    hs.append(z["hashes"])
            self._pending_hashes, self._pending_first = np.unique(np.concatenate(hs), return_index=True)

    def _pending(self) -> np.ndarray | None:
        """The pending shards' vectors, in `_pending_hashes` order (read once, when first needed)."""
        if self._pending_vectors is None and self._pending_hashes is not None:
            vs = []
            try:
                for part in self._pending_parts:
                    with np.load(part) as z:
                        vs.append(z["vectors"])
            except FileNotFoundError:  # merged into the store meanwhile (a compaction elsewhere)
                self._load()
                return self._pending() if self._pending_parts else None
            self._pending_vectors = np.concatenate(vs)[self._pending_first]
        return self._pending_vectors

    def __len__(self) -> int:
        stored = 0 if self._hashes is None else len(self._hashes)
        if self._pending_hashes is None:
            return stored
        if self._hashes is None:
            return len(self._pending_hashes)
        return stored + int((~_member(self._pending_hashes, self._hashes)).sum())

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(found mask, vectors of the found hashes in order)."""
        found = np.zeros(len(hashes), dtype=bool)
        vectors = None
        for known, rows, stored in ((self._hashes, self._rows, lambda: self._vectors),
                                    (self._pending_hashes, None, self._pending)):
            if known is None or len(known) == 0:
                continue
            pos = np.minimum(np.searchsorted(known, hashes), len(known) - 1)
            here = (known[pos] == hashes) & ~found
            if not here.any():
                continue
            stored = stored()
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

        Appends: the pending vectors whose hash the store lacks (the first of each) go to the end
        of `vectors.f32`, one shard in memory at a time, then the index (hashes sorted, with their
        rows) is replaced in one atomic rename. Nothing already stored is read or rewritten, so
        the time and memory are those of the new vectors, never the store's. A hash in both keeps
        the stored vector. A compaction that dies leaves unindexed rows at the end of the file,
        cut by the next one; readers never look past their index's rows."""
        parts = sorted(self.pending.glob("*.npz"))
        if not parts:
            return len(self)
        store = self.root / "store"
        store.mkdir(exist_ok=True)
        if not self.index_path.exists() and (store / "hashes.npy").exists():
            self._convert(store)
        hashes, rows, count, dim = np.zeros(0, np.uint64), np.zeros(0, np.int64), 0, None
        if self.index_path.exists():
            with np.load(self.index_path) as z:
                hashes, rows, count, dim = z["hashes"], z["rows"], int(z["count"]), int(z["dim"])
        sizes, pending = [], []
        for part in parts:
            with np.load(part) as z:
                pending.append(z["hashes"])
                sizes.append(len(pending[-1]))
        pending_h = np.concatenate(pending).astype(np.uint64)
        _, first = np.unique(pending_h, return_index=True)
        first = np.sort(first[~_member(pending_h[first], hashes)])  # new hashes, in arrival order
        keep = np.zeros(len(pending_h), dtype=bool)
        keep[first] = True
        with open(store / "vectors.f32", "ab") as fh:
            pass  # exists from here on
        with open(store / "vectors.f32", "r+b") as fh:
            start = 0
            for part, size in zip(parts, sizes):
                take = keep[start:start + size]
                start += size
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
        added = len(first)
        all_h = np.concatenate([hashes, pending_h[first]])
        all_rows = np.concatenate([rows, np.arange(count, count + added, dtype=np.int64)])
        order = np.argsort(all_h, kind="stable")
        tmp = store / f".index-{uuid.uuid4().hex}.npz"
        with open(tmp, "wb") as fh:
            np.savez(fh, hashes=all_h[order], rows=all_rows[order], count=np.int64(count + added),
                     dim=np.int64(dim or 0))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.index_path)
        for part in parts:
            part.unlink(missing_ok=True)
        self._load()
        return len(self)

    def _convert(self, store: Path) -> None:
        """A store of the earlier layout (hashes.npy + vectors.npy in hash order) into this one:
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
        tmp = store / f".index-{uuid.uuid4().hex}.npz"
        with open(tmp, "wb") as fh:
            np.savez(fh, hashes=hashes, rows=np.arange(len(hashes), dtype=np.int64), count=np.int64(len(hashes)),
                     dim=np.int64(dim))
        os.replace(tmp, self.index_path)
        (store / "hashes.npy").unlink(missing_ok=True)
        (store / "vectors.npy").unlink(missing_ok=True)


def _member(values: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """Which of `values` are in the sorted array `sorted_values`."""
    if len(sorted_values) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return sorted_values[pos] == values
