"""The one store interface every index module uses, and the factory that opens it from the spec.

Two engines stand behind it:

- the embedded engine (`index.qdrant.path`, default `<runs>/qdrant`): Qdrant Edge, Qdrant's own
  engine in-process (`vectune.index.edge`). Edge has shards, not collections: vectune gives each
  collection version its own shard folder, keeps the alias as a small record replaced atomically
  and the stamp in a version record beside the shard. One process may open a shard at a time.
- a Qdrant server (`index.qdrant.url`, `vectune.index.server`): collections, aliases and
  collection metadata of the server itself, through qdrant-client; many Ray workers write at once.

Both build the same layout: a named dense vector `dense` (size, distance) and, optionally, a named
sparse vector `bm25` with the IDF modifier (Qdrant computes the IDF from the collection), so a
query can prefetch both and fuse them (`hybrid`).

The server's API key is read from the environment variable the spec names (`api_key_env`); it is
never written to the spec, a log, an error or the manifest.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np

from vectune._redact import redact
from vectune.errors import Problem, SpecError
from vectune.ranking import FUSIONS  # noqa: F401  (the engines check a fusion by it)
from vectune.spec import Spec

MEMORY = ":memory:"
#: the named vectors of every collection vectune builds
DENSE = "dense"
SPARSE = "bm25"
#: points per page of a scroll: bounded memory whatever the collection's size
PAGE = 10_000
#: reciprocal rank fusion's default constant: 1 / (RRF_K + rank) summed over the prefetched lists,
#: on both engines (the spec's `search.rrf_k`)
RRF_K = 60


class Secret:
    """A value that never prints: repr, str and pickled logs show `***`."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


@dataclass(frozen=True)
class Target:
    """Where Qdrant is and how to talk to it; picklable, so Ray workers can open it too.

    Attributes:
        url: a server URL, or None for the embedded engine.
        path: the embedded engine's folder (or `:memory:`), or None for a server.
        api_key: the server key, masked in every repr; None when the spec names none.
        api_key_env: the environment variable it came from (named in messages).
    """

    url: str | None = None
    path: str | None = None
    prefer_grpc: bool = False
    timeout: float = 30.0
    retries: int = 3
    api_key_env: str | None = None
    api_key: Secret | None = field(default=None, repr=False)

    @property
    def embedded(self) -> bool:
        return self.url is None

    def describe(self) -> str:
        """Where this is, for messages and the manifest (never the key)."""
        return redact(self.url) if self.url else f"embedded engine at {self.path}"


@dataclass(frozen=True)
class Hnsw:
    """HNSW settings: built with `m` and `ef_construct`, searched with `ef` (None: the engine's default)."""

    m: int = 16
    ef_construct: int = 100
    ef: int | None = None
    on_disk: bool = False


@dataclass(frozen=True)
class Layout:
    """The vectors of a collection version.

    Attributes:
        size: the dense vector's dimension.
        distance: `cosine`, `dot` or `euclid`.
        sparse: whether it has the `bm25` sparse vector (IDF modifier).
        dense_name: the dense vector's name: `dense`; "" for an unnamed one (collections an older
            vectune built on a server).
        shard_points: the embedded engine's most points per shard (`index.shard_points`): a larger
            version is held in several shards, filled and indexed one at a time; None: one shard.
            A server has its own `shards`.
    """

    size: int
    distance: str
    sparse: bool = False
    hnsw: Hnsw = Hnsw()
    on_disk: bool = False
    shards: int = 1
    replication: int = 1
    dense_name: str = DENSE
    shard_points: int | None = None


@dataclass(frozen=True)
class Sparse:
    """A sparse vector: non-zero dimensions and their weights (e.g. `qdrant_edge.Bm25` output)."""

    indices: list[int]
    values: list[float]


@dataclass(frozen=True)
class Record:
    """A stored point: its id (uuid string), the payload fields asked for, its dense vector if asked."""

    id: str
    payload: dict
    vector: list[float] | None = None


@dataclass(frozen=True)
class Hit:
    """A point a query found, with its score."""

    id: str
    score: float
    payload: dict


class Store(Protocol):
    """What the index stage, sync, verify, rollback, search and `collections` use of Qdrant.

    A collection is one version `<base>__<run id>`; an alias names the version readers query.
    Every method that takes a collection name also takes an alias where it reads (search).
    """

    where: Target

    def describe(self) -> str: ...

    # -- versions ------------------------------------------------------------------------
    def collections(self) -> list[str]: ...
    def exists(self, name: str) -> bool: ...
    def create(self, name: str, layout: Layout, *, stamp: dict) -> None: ...
    def drop(self, name: str) -> None: ...
    def layout(self, name: str) -> Layout: ...
    def read_stamp(self, name: str) -> dict | None: ...
    def write_stamp(self, name: str, stamp: dict) -> None: ...

    # -- the alias -------------------------------------------------------------------------
    def alias(self, alias: str) -> str | None: ...
    def swap_alias(self, alias: str, collection: str) -> str | None: ...

    # -- points ------------------------------------------------------------------------------
    def upsert(self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict],
               sparse: Sequence[Sparse] | None = None, *, new_ids: bool = False) -> int: ...
    def delete(self, name: str, ids: Sequence[str]) -> None: ...
    def count(self, name: str, *, has_vector: str | None = None, has_field: str | None = None) -> int: ...
    def scroll_page(self, name: str, fields: Sequence[str] | None, offset: str | None,
                    limit: int) -> tuple[list[Record], str | None]: ...
    def scroll(self, name: str, fields: Sequence[str] | None = None, *, page: int = PAGE) -> Iterator[list[Record]]: ...
    def retrieve(self, name: str, ids: Sequence[str], fields: Sequence[str] | None = None, *,
                 vectors: bool = False, keep_open: bool = True) -> list[Record]: ...

    # -- queries and the index ---------------------------------------------------------------
    def search(self, name: str, vector: Sequence[float], k: int, fields: Sequence[str] | None = None, *,
               ef: int | None = None) -> list[Hit]: ...
    def hybrid(self, name: str, dense: Sequence[float], sparse: Sparse, k: int, fields: Sequence[str] | None = None,
               *, fusion: str = "rrf", prefetch: int = 100, ef: int | None = None,
               rrf_k: int = RRF_K) -> list[Hit]: ...
    def build_index(self, name: str, hnsw: Hnsw, *, timeout: float = 3600.0) -> dict: ...
    def close(self) -> None: ...


def pages(scroll_page, name: str, fields, page: int) -> Iterator[list[Record]]:
    """Every point of a collection, `page` at a time, from a `scroll_page` callable."""
    offset = None
    while True:
        records, offset = scroll_page(name, fields, offset, page)
        if records:
            yield records
        if offset is None:
            return



# -- the factory ------------------------------------------------------------------------------
def target(spec: Spec) -> Target:
    """The spec's Qdrant location, with the API key read from its environment variable."""
    q = spec.index.qdrant
    if q.url:
        key = None
        if q.api_key_env:
            value = os.environ.get(q.api_key_env)
            if not value:
                raise SpecError(str(spec.source or "<spec>"), [Problem(
                    "index.qdrant.api_key_env",
                    f"environment variable {q.api_key_env} is not set (it should hold the Qdrant API key)")])
            key = Secret(value)
        return Target(url=q.url, prefer_grpc=q.prefer_grpc, timeout=q.timeout, retries=q.retries,
                      api_key_env=q.api_key_env, api_key=key)
    return Target(path=embedded_path(spec), timeout=q.timeout, retries=q.retries)


def embedded_path(spec: Spec) -> str:
    """`index.qdrant.path` resolved against the spec's folder, or `<runs>/qdrant`."""
    path = spec.index.qdrant.path
    if path == MEMORY:
        return MEMORY
    if path:
        return spec.resolve(path, data=False)
    runs = spec.runs_root()
    if "://" in runs:
        raise SpecError(str(spec.source or "<spec>"), [Problem(
            "index.qdrant", f"runs are stored at {runs}, which the embedded Qdrant engine cannot use; "
                            "set index.qdrant.path to a local folder or index.qdrant.url to a server")])
    return str(Path(runs) / "qdrant")


def layout(spec: Spec, size: int, points: int, *, sparse: bool = False) -> Layout:
    """The layout a build of this spec creates, for `size`-d vectors of `points` documents."""
    idx = spec.index
    return Layout(size=size, distance=idx.distance, sparse=sparse, hnsw=hnsw(spec, points),
                  on_disk=idx.on_disk_vectors, shards=idx.shards, replication=idx.replication,
                  shard_points=None if idx.qdrant.url else idx.shard_points)


def hnsw(spec: Spec, points: int, *, per_shard: int | None = None) -> Hnsw:
    """The spec's HNSW settings for a collection of `points` points (`ef: auto` resolved: on the
    embedded engine each shard is searched by itself, so for the points of its largest shard,
    at most `per_shard`: by default the spec's `index.shard_points`, for an existing version its own)."""
    h = spec.index.hnsw
    per = per_shard or spec.index.shard_points
    if per and not spec.index.qdrant.url:
        points = min(points, per)
    ef = auto_ef(points) if h.ef == "auto" else h.ef
    return Hnsw(m=h.m, ef_construct=h.ef_construct, ef=ef, on_disk=h.on_disk)


#: up to this many points `auto_ef` is AUTO_EF; beyond, it grows with the square root of the count
AUTO_EF, AUTO_EF_UP_TO = 256, 250_000


def auto_ef(points: int) -> int:
    """The search `ef` of `index.hnsw.ef: auto` for a collection of `points` points (m 16,
    ef_construct 100): 256 up to 250,000 points, then 256 * sqrt(points / 250,000) rounded up to
    a multiple of 64 (512 at 1,000,000; 1,664 at 10,000,000), at most 4,096.

    Measured on Qdrant Edge, recall@10 against exact search (benchmarks/results: hnsw_200k.json,
    scale_100k.json, scale_1m_2026-12-06b.json): ef 256 gives 0.98 at 100,000 and 0.968 at
    200,000 points, but 0.929 at 1,000,000, where 384 gives 0.952 and 512 0.965 (engine p50 5.0
    ms). The square-root growth between the two measured sizes is carried beyond 1,000,000 as an
    extrapolation; a server is searched with the same `ef` (stamped on the collection).
    """
    if points <= AUTO_EF_UP_TO:
        return AUTO_EF
    return min(4096, 64 * math.ceil(AUTO_EF * math.sqrt(points / AUTO_EF_UP_TO) / 64))
