"""What a point carries: its id (uuid5 of the document id, so a re-run overwrites instead of
duplicating) and its payload, with the document's content hash that an incremental sync
diffs against."""

from __future__ import annotations

import hashlib
import uuid
from typing import Iterable

import numpy as np

#: fixed namespace: the same document id maps to the same point id in every collection
POINT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://vectune.dev/points")

_MASK = (1 << 128) - 1


_NAMESPACE_BYTES = POINT_NAMESPACE.bytes


def point_id(doc_id: str) -> str:
    """The Qdrant point id of a document: uuid5 of its id, stable across runs.

    RFC 4122's uuid5 (SHA-1 of the namespace and the name, version and variant bits set),
    written out here because `uuid.uuid5` builds and validates a `UUID` object per call: this
    is 3x faster, and every re-index, sync and verification computes it once per document."""
    x = _uuid5_hex(doc_id)
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _uuid5_hex(doc_id) -> str:
    h = bytearray(hashlib.sha1(_NAMESPACE_BYTES + str(doc_id).encode()).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    return h.hex()


def id_checksum(point_ids: Iterable[str]) -> tuple[int, int]:
    """(count, sum of the 128-bit ids mod 2**128): equal for two id sets that are equal,
    computed in one streaming pass with constant memory."""
    count = total = 0
    for pid in point_ids:
        count += 1
        total = (total + int(str(pid).replace("-", ""), 16)) & _MASK
    return count, total


def point_keys(doc_ids: Iterable[str]) -> np.ndarray:
    """The point ids of `doc_ids` as sorted 16-byte keys (16 MB for a million documents): what
    `points_outside` looks point ids up in."""
    return np.sort(np.array([bytes.fromhex(_uuid5_hex(d)) for d in doc_ids], dtype="S16"))


def point_ids_and_keys(doc_ids) -> tuple[list[str], np.ndarray]:
    """(`point_id` of each of `doc_ids`, the same ids as 16-byte keys, in the same order): one
    hash per document for both."""
    hexes = [_uuid5_hex(d) for d in doc_ids]
    ids = [f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}" for x in hexes]
    return ids, np.array([bytes.fromhex(x) for x in hexes], dtype="S16")


def id_keys(point_ids: list[str]) -> np.ndarray:
    """Point ids (uuid strings) as 16-byte keys, in the same order."""
    return np.array([bytes.fromhex(str(p).replace("-", "")) for p in point_ids], dtype="S16")


def key_checksum(keys: np.ndarray) -> tuple[int, int]:
    """`id_checksum` of the point ids whose 16-byte keys are `keys` (any order), vectorised: the
    keys are summed as four 32-bit big-endian words each (exact below 2**32 keys), then carried."""
    if not len(keys):
        return 0, 0
    words = np.frombuffer(np.ascontiguousarray(keys, dtype="S16").tobytes(), dtype=">u4").reshape(-1, 4)
    sums = words.sum(axis=0, dtype=np.uint64)
    return len(keys), sum(int(s) << (32 * (3 - j)) for j, s in enumerate(sums)) & _MASK


def checksum_plus(a: tuple[int, int], b: tuple[int, int], sign: int = 1) -> tuple[int, int]:
    """The `id_checksum` of the union of two disjoint id sets (`sign` -1: of `a` less its subset `b`)."""
    return a[0] + sign * b[0], (a[1] + sign * b[1]) & _MASK


def points_outside(keys: np.ndarray, point_ids: list[str], asked: np.ndarray | None = None) -> list[str]:
    """Those of `point_ids` whose id is not among `keys` (from `point_keys`), exactly. `asked`:
    `id_keys(point_ids)` when the caller has them."""
    if not point_ids:
        return []
    if not len(keys):
        return [str(p) for p in point_ids]
    asked = id_keys(point_ids) if asked is None else asked
    at = np.minimum(np.searchsorted(keys, asked), len(keys) - 1)
    return [str(p) for p, there in zip(point_ids, keys[at] == asked) if not there]


class IdScan:
    """One pass over a collection's point ids, page by page: their `id_checksum` and those that
    are not among `keys` (`point_keys` of the corpus). Holds the gone ids only."""

    def __init__(self, keys: np.ndarray):
        self.keys = keys
        self.checksum = (0, 0)
        self.outside: list[str] = []

    def add(self, point_ids: list[str]) -> None:
        asked = id_keys(point_ids)
        self.checksum = checksum_plus(self.checksum, key_checksum(asked))
        self.outside.extend(points_outside(self.keys, point_ids, asked))

    def result(self) -> tuple[tuple[int, int], list[str]]:
        return self.checksum, self.outside


def payload_fields(spec) -> list[str]:
    """Payload fields every point carries: the spec's `index.payload`, `doc_id` and `text_hash`."""
    return sorted(set(spec.index.payload) | {"doc_id", "text_hash"})


def content_hashes(titles, texts) -> np.ndarray:
    """64-bit content hashes of documents (blake2b over title and text), what `text_hash` holds.

    The title is hashed apart from the text, so a change that moves words between the two
    (same embedded text, another `title` payload) still counts as a change.
    """
    from vectune.embed.cache import text_hashes

    return text_hashes([f"{t}\x1f{x}" for t, x in zip(titles, texts)])


def hash_hex(hashes: np.ndarray) -> np.ndarray:
    """`text_hash` payload values: 16 hex digits (Qdrant integers are signed 64-bit)."""
    return np.asarray([f"{int(h):016x}" for h in hashes], dtype=object)


def add_content_hash(batch: dict) -> dict:
    """Ray Data UDF: a `text_hash` column from `title` and `text` (see `content_hashes`)."""
    batch["text_hash"] = hash_hex(content_hashes(batch["title"], batch["text"]))
    return batch


def doc_keys(doc_ids) -> np.ndarray:
    """64-bit keys of document ids (the high half of their point ids): a seeded, uniform order
    for choosing a sample of documents that merges across blocks."""
    return np.fromiter((int(_uuid5_hex(d)[:16], 16) for d in doc_ids), dtype=np.uint64, count=len(doc_ids))


def sparse_identity(spec) -> dict | None:
    """What decides the BM25 vectors (None without them): the tokenizer and scoring settings
    and the engine that computes them. Stamped on the collection: a query embedded under other
    settings would not match the stored vectors, so search refuses it, and sync rebuilds."""
    if spec.index.sparse != "bm25":
        return None
    from vectune.ranking import engine_version

    return {"bm25": spec.bm25.model_dump(mode="json"), "engine": f"qdrant-edge-py {engine_version()}"}


def bm25_settings(spec):
    """The `bm25` section when points carry BM25 vectors (`index.sparse: bm25`), else None."""
    return spec.bm25 if spec.index.sparse == "bm25" else None


def kept_columns(spec) -> tuple[str, ...]:
    """Columns carried past the encoder to the writers: the payload, and the text its BM25
    vector is made from when points carry one."""
    return tuple(dict.fromkeys([*payload_fields(spec), *(["text"] if spec.index.sparse == "bm25" else [])]))


def sample_key(seed: str, doc_id: str) -> bytes:
    """The key a verification sample is drawn by: the `k` documents with the smallest keys for
    `seed` (uniform, reproducible, and mergeable across blocks and tasks)."""
    return hashlib.blake2b(f"{seed}\x1f{doc_id}".encode(), digest_size=8).digest()
