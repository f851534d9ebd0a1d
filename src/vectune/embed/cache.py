"""An embedding cache keyed by model fingerprint and document-text hash.

Layout under `<runs>/_cache/embeddings/<key>/`, where `key` hashes the model fingerprint
and every setting that changes a vector (max_seq_length, prefix, normalisation):

    store/hashes.npy    sorted uint64 text hashes
    store/vectors.npy   float32 vectors in the same order (memory-mapped on read)
    pending/*.npz       new vectors written by encoder workers, merged by `compact()`

Readers keep only the hashes in memory (8 bytes a text); vectors stay on disk.
The folder must be visible to every node that encodes (a shared mount on a cluster).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np


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


class EmbeddingCache:
    """Look up and add vectors by text hash. Safe for many writers; compaction is single-writer."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.pending = self.root / "pending"
        self.pending.mkdir(parents=True, exist_ok=True)
        self._hashes: np.ndarray | None = None
        self._vectors: np.ndarray | None = None
        self._load()

    def _load(self) -> None:
        store = self.root / "store"
        self._hashes = self._vectors = None
        if (store / "hashes.npy").exists():
            self._hashes = np.load(store / "hashes.npy")
            self._vectors = np.load(store / "vectors.npy", mmap_mode="r")
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
        for known, stored in ((self._hashes, lambda: self._vectors), (self._pending_hashes, self._pending)):
            if known is None or len(known) == 0:
                continue
            pos = np.minimum(np.searchsorted(known, hashes), len(known) - 1)
            here = (known[pos] == hashes) & ~found
            if not here.any():
                continue
            stored = stored()
            if vectors is None:
                vectors = np.zeros((len(hashes), stored.shape[1]), dtype=np.float32)
            vectors[here] = np.asarray(stored[pos[here]])
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

    def compact(self, chunk: int = 16384) -> int:
        """Merge pending shards into the store; returns the number of vectors stored.

        Streams: memory holds the hashes (8 bytes a text, plus the merge's indices) and one
        chunk of vectors at a time, never the store's vectors, whatever the corpus size. The
        pending shards are first appended to one flat file; then the merged store is written
        in hash order, chunk by chunk, each chunk gathered from the old store and that file
        through maps opened for the chunk alone (so their pages leave this process's memory
        with it). A hash in both keeps the stored vector."""
        parts = sorted(self.pending.glob("*.npz"))
        if not parts:
            return len(self)
        new = self.root / f".store-{uuid.uuid4().hex}"
        new.mkdir()
        flat = new / "pending.npy"
        stored_path = self.root / "store" / "vectors.npy"
        stored_h = np.load(self.root / "store" / "hashes.npy") if stored_path.exists() else np.zeros(0, np.uint64)
        pending_h = _append_parts(parts, flat)
        dim = np.load(flat, mmap_mode="r").shape[1] if len(pending_h) else np.load(stored_path, mmap_mode="r").shape[1]
        merged, first = np.unique(np.concatenate([stored_h, pending_h]), return_index=True)
        out = np.lib.format.open_memmap(new / "vectors.npy", mode="w+", dtype=np.float32, shape=(len(merged), dim))
        offset = out.offset
        del out
        with open(new / "vectors.npy", "r+b") as fh:
            fh.seek(offset)
            for i in range(0, len(merged), chunk):
                rows = first[i : i + chunk]
                from_store = rows < len(stored_h)
                block = np.empty((len(rows), dim), dtype=np.float32)
                if from_store.any():
                    source = np.load(stored_path, mmap_mode="r")
                    block[from_store] = source[rows[from_store]]
                    del source
                if (~from_store).any():
                    source = np.load(flat, mmap_mode="r")
                    block[~from_store] = source[rows[~from_store] - len(stored_h)]
                    del source
                fh.write(block.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        np.save(new / "hashes.npy", merged)
        flat.unlink()
        old = self.root / "store"
        trash = self.root / f".old-{uuid.uuid4().hex}"
        if old.exists():
            os.replace(old, trash)
        os.replace(new, old)
        for part in parts:
            part.unlink(missing_ok=True)
        shutil.rmtree(trash, ignore_errors=True)
        self._load()
        return len(self)


def _member(values: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """Which of `values` are in the sorted array `sorted_values`."""
    if len(sorted_values) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return sorted_values[pos] == values


def _append_parts(parts: list[Path], flat: Path) -> np.ndarray:
    """The vectors of every part, one after another, in one .npy file (one part in memory at a
    time); returns their hashes in the same order."""
    hashes = []
    rows, dim = 0, None
    for part in parts:  # the shape first, for the header
        with np.load(part) as z:
            h = z["hashes"]
            hashes.append(h)
            rows += len(h)
            if dim is None and len(h):
                dim = z["vectors"].shape[1]
    if rows == 0:
        np.save(flat, np.zeros((0, dim or 1), dtype=np.float32))
        return np.zeros(0, dtype=np.uint64)
    out = np.lib.format.open_memmap(flat, mode="w+", dtype=np.float32, shape=(rows, dim))
    offset = out.offset
    del out
    with open(flat, "r+b") as fh:
        fh.seek(offset)
        for part in parts:
            with np.load(part) as z:
                fh.write(np.ascontiguousarray(z["vectors"], dtype=np.float32).tobytes())
    return np.concatenate(hashes).astype(np.uint64)
