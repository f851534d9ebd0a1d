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
        if (store / "hashes.npy").exists():
            self._hashes = np.load(store / "hashes.npy")
            self._vectors = np.load(store / "vectors.npy", mmap_mode="r")
        # pending shards from this run are visible too (small: merged after every stage)
        parts = sorted(self.pending.glob("*.npz"))
        if parts:
            hs, vs = [], []
            if self._hashes is not None:
                hs.append(self._hashes)
                vs.append(np.asarray(self._vectors))
            for part in parts:
                with np.load(part) as z:
                    hs.append(z["hashes"])
                    vs.append(z["vectors"])
            h = np.concatenate(hs)
            v = np.concatenate(vs)
            h, first = np.unique(h, return_index=True)
            self._hashes, self._vectors = h, v[first]

    def __len__(self) -> int:
        return 0 if self._hashes is None else len(self._hashes)

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(found mask, vectors of the found hashes in order)."""
        if self._hashes is None or len(self._hashes) == 0:
            return np.zeros(len(hashes), dtype=bool), None
        pos = np.searchsorted(self._hashes, hashes)
        pos = np.minimum(pos, len(self._hashes) - 1)
        found = self._hashes[pos] == hashes
        if not found.any():
            return found, None
        return found, np.asarray(self._vectors[pos[found]])

    def add(self, hashes: np.ndarray, vectors: np.ndarray) -> None:
        """Write new vectors as a pending shard (atomic rename, any process)."""
        if len(hashes) == 0:
            return
        tmp = self.pending / f".{uuid.uuid4().hex}.tmp.npz"
        np.savez(tmp, hashes=hashes.astype(np.uint64), vectors=vectors.astype(np.float32))
        os.replace(tmp, self.pending / f"{uuid.uuid4().hex}.npz")

    def compact(self) -> int:
        """Merge pending shards into the store; returns the number of vectors stored."""
        parts = sorted(self.pending.glob("*.npz"))
        if not parts:
            return len(self)
        self._load()
        new = self.root / f".store-{uuid.uuid4().hex}"
        new.mkdir()
        np.save(new / "hashes.npy", self._hashes)
        out = np.lib.format.open_memmap(new / "vectors.npy", mode="w+", dtype=np.float32, shape=self._vectors.shape)
        step = 65536
        for i in range(0, len(out), step):
            out[i : i + step] = self._vectors[i : i + step]
        out.flush()
        del out
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
