"""A Qdrant server behind the store interface (`index.qdrant.url`), through qdrant-client.

Collections, aliases and collection metadata are the server's own: a version is a collection,
the alias moves in one `update_collection_aliases` call (delete + create), the vectune stamp is
the collection's metadata under `vectune`. The bulk load runs with HNSW off (`m=0`); `build_index`
turns it on once over the loaded points and waits for the server to report the collection green.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Iterator, Sequence

import numpy as np

from vectune._redact import redact
from vectune.errors import IndexingError
from vectune.index.store import (DENSE, FUSIONS, PAGE, RRF_K, SPARSE, Hit, Hnsw, Layout, Record, Sparse, Target,
                                 pages)

log = logging.getLogger(__name__)

STAMP_KEY = "vectune"
_DISTANCES = {"cosine": "Cosine", "dot": "Dot", "euclid": "Euclid"}


def _client(where: Target):
    """The qdrant-client for a server url (the one place a `QdrantClient` is made)."""
    from qdrant_client import QdrantClient

    return QdrantClient(
        url=where.url,
        api_key=where.api_key.reveal() if where.api_key else None,
        prefer_grpc=where.prefer_grpc,
        timeout=int(math.ceil(where.timeout)),
        # qdrant-client's own probe (same major, minors at most one apart) warns on a server
        # too old or too new for this client; a refused probe warns once per process
        check_compatibility=True,
    )


class ServerStore:
    """vectune's store on a Qdrant server (see the module docstring). Open it with `ServerStore.open`."""

    def __init__(self, where: Target, client):
        self.where = where
        self.client = client

    @classmethod
    def open(cls, where: Target) -> "ServerStore":
        """Open a client and make one cheap call, retrying a server that refuses connections.

        Retries `where.retries` times with exponential backoff (0.5 s, 1 s, 2 s, ... capped at
        8 s), then raises IndexingError. An authentication failure is not retried.
        """
        attempts = 1 + max(0, where.retries)
        last = ""
        for attempt in range(attempts):
            client = _client(where)
            try:
                client.get_collections()
                return cls(where, client)
            except Exception as exc:  # noqa: BLE001 - classified below, never re-raised raw
                client.close()
                kind, last = _classify(exc)
                last = redact(last)
                if kind == "auth":
                    hint = (f" (check the key in ${where.api_key_env})" if where.api_key_env
                            else " (set index.qdrant.api_key_env)")
                    raise IndexingError(f"Qdrant at {where.describe()} rejected the API key{hint}") from None
                if kind == "fatal":
                    raise IndexingError(f"Qdrant at {where.describe()} answered with an error: {last}") from None
            if attempt + 1 < attempts:
                delay = min(8.0, 0.5 * 2**attempt)
                log.warning("Qdrant at %s unreachable (%s); retry %d/%d in %.1f s", where.describe(), last,
                            attempt + 1, attempts - 1, delay)
                time.sleep(delay)
        raise IndexingError(f"cannot reach Qdrant at {where.describe()} after {attempts} attempt(s): {last}. "
                            "Is the server running and the URL (and port) right?")

    def describe(self) -> str:
        return self.where.describe()

    # -- versions --------------------------------------------------------------------------
    def collections(self) -> list[str]:
        return sorted(c.name for c in self.client.get_collections().collections)

    def exists(self, name: str) -> bool:
        return self.client.collection_exists(name)

    def create(self, name: str, layout: Layout, *, stamp: dict) -> None:
        """The collection with HNSW off for the bulk load (`build_index` turns it on), stamped."""
        from qdrant_client import models

        h = layout.hnsw
        self.client.create_collection(
            name,
            vectors_config={DENSE: models.VectorParams(
                size=layout.size, distance=models.Distance(_DISTANCES[layout.distance]),
                on_disk=layout.on_disk or None)},
            sparse_vectors_config=({SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)}
                                   if layout.sparse else None),
            # m=0: no HNSW graph while bulk loading (it is built once, after; see build_index)
            hnsw_config=models.HnswConfigDiff(m=0, ef_construct=h.ef_construct, on_disk=h.on_disk),
            shard_number=layout.shards,
            replication_factor=layout.replication,
            metadata={STAMP_KEY: stamp},
        )
        if self.read_stamp(name) is None:
            self.client.delete_collection(name)
            raise IndexingError("this Qdrant does not keep collection metadata (vectune's stamp); upgrade the server")
        self.client.create_payload_index(name, "doc_id", models.PayloadSchemaType.KEYWORD)

    def drop(self, name: str) -> None:
        self.client.delete_collection(name)

    def layout(self, name: str) -> Layout:
        params = self.client.get_collection(name).config.params
        vectors = params.vectors
        if isinstance(vectors, dict):
            dense_name = DENSE if DENSE in vectors else next(iter(vectors), DENSE)
            dense = vectors.get(dense_name)
        else:  # one unnamed vector: collections an older vectune built
            dense_name, dense = "", vectors
        if dense is None:
            raise IndexingError(f"{name} has no dense vector")
        distance = str(getattr(dense.distance, "value", dense.distance)).lower()
        return Layout(size=dense.size, distance=distance, sparse=SPARSE in (params.sparse_vectors or {}),
                      on_disk=bool(dense.on_disk), shards=params.shard_number or 1,
                      replication=params.replication_factor or 1, dense_name=dense_name)

    def read_stamp(self, name: str) -> dict | None:
        metadata = self.client.get_collection(name).config.metadata or {}
        stamp = metadata.get(STAMP_KEY)
        return dict(stamp) if isinstance(stamp, dict) else None

    def write_stamp(self, name: str, stamp: dict) -> None:
        """Replace the stamp (metadata merges top-level keys, so the whole dict is rewritten)."""
        self.client.update_collection(name, metadata={STAMP_KEY: stamp})

    # -- the alias -------------------------------------------------------------------------
    def alias(self, alias: str) -> str | None:
        for a in self.client.get_aliases().aliases:
            if a.alias_name == alias:
                return a.collection_name
        return None

    def swap_alias(self, alias: str, collection: str) -> str | None:
        """Point `alias` at `collection` in ONE atomic call (delete + create); returns the previous one."""
        from qdrant_client import models

        previous = self.alias(alias)
        if previous == collection:
            return previous
        ops = []
        if previous is not None:
            ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        ops.append(models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)))
        self.client.update_collection_aliases(change_aliases_operations=ops)
        return previous

    # -- points ------------------------------------------------------------------------------
    def upsert(self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict],
               sparse: Sequence[Sparse] | None = None, *, new_ids: bool = False) -> int:
        """`new_ids` changes nothing here: a server finds a point's shard by its id."""
        from qdrant_client import models

        named: dict = {DENSE: np.asarray(vectors, dtype=np.float32).tolist()}
        if sparse is not None:
            named[SPARSE] = [models.SparseVector(indices=list(s.indices), values=list(s.values)) for s in sparse]
        # built from our own well-typed columns: skip pydantic's per-float validation (~7% of an upsert)
        batch = models.Batch.model_construct(ids=list(ids), vectors=named, payloads=list(payloads))
        self.client.upsert(name, points=batch, wait=True)
        return len(ids)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        from qdrant_client import models

        self.client.delete(name, points_selector=models.PointIdsList(points=list(ids)), wait=True)

    def count(self, name: str, *, has_vector: str | None = None, has_field: str | None = None) -> int:
        from qdrant_client import models

        flt = None
        if has_vector or has_field:
            layout = self.layout(name) if has_vector == DENSE else None
            vector = layout.dense_name if layout is not None else has_vector
            flt = models.Filter(
                must=[models.HasVectorCondition(has_vector=vector)] if has_vector else None,
                must_not=[models.IsEmptyCondition(is_empty=models.PayloadField(key=has_field))] if has_field else None)
        return self.client.count(name, count_filter=flt, exact=True).count

    def scroll_page(self, name: str, fields: Sequence[str] | None, offset: str | None,
                    limit: int) -> tuple[list[Record], str | None]:
        points, after = self.client.scroll(name, limit=limit, offset=offset,
                                           with_payload=list(fields) if fields else False, with_vectors=False)
        return [Record(str(p.id), dict(p.payload or {})) for p in points], (None if after is None else str(after))

    def scroll(self, name: str, fields: Sequence[str] | None = None, *, page: int = PAGE) -> Iterator[list[Record]]:
        return pages(self.scroll_page, name, fields, page)

    def retrieve(self, name: str, ids: Sequence[str], fields: Sequence[str] | None = None, *,
                 vectors: bool = False, keep_open: bool = True) -> list[Record]:
        """`keep_open` is the embedded engine's (a server holds its shards)."""
        dense_name = self.layout(name).dense_name if vectors else DENSE
        got = self.client.retrieve(name, list(ids), with_payload=list(fields) if fields else False,
                                   with_vectors=([dense_name] if dense_name else True) if vectors else False)
        out = []
        for p in got:
            vector = p.vector
            if isinstance(vector, dict):
                vector = vector.get(dense_name or DENSE)
            out.append(Record(str(p.id), dict(p.payload or {}), list(vector) if vectors and vector is not None
                              else None))
        return out

    # -- queries and the index ---------------------------------------------------------------
    def _params(self, ef: int | None):
        from qdrant_client import models

        return models.SearchParams(hnsw_ef=ef) if ef else None

    def search(self, name: str, vector: Sequence[float], k: int, fields: Sequence[str] | None = None, *,
               ef: int | None = None) -> list[Hit]:
        dense_name = self.layout(name).dense_name
        points = self.client.query_points(name, query=[float(v) for v in vector], using=dense_name or None, limit=k,
                                          with_payload=list(fields) if fields else False,
                                          search_params=self._params(ef)).points
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def hybrid(self, name: str, dense: Sequence[float], sparse: Sparse, k: int, fields: Sequence[str] | None = None,
               *, fusion: str = "rrf", prefetch: int = 100, ef: int | None = None,
               rrf_k: int = RRF_K) -> list[Hit]:
        """Dense and `bm25` sparse candidates (`prefetch` each), fused by the server (RRF with `rrf_k`, or DBSF)."""
        from qdrant_client import models

        if fusion not in FUSIONS:
            raise ValueError(f"fusion {fusion!r}: choose from {FUSIONS}")
        layout = self.layout(name)
        if not layout.sparse:
            raise IndexingError(f"{name} has no `{SPARSE}` sparse vector to search")
        points = self.client.query_points(
            name, limit=k, with_payload=list(fields) if fields else False,
            prefetch=[models.Prefetch(query=[float(v) for v in dense], using=layout.dense_name or None,
                                      limit=prefetch, params=self._params(ef)),
                      models.Prefetch(query=models.SparseVector(indices=list(sparse.indices),
                                                                values=[float(v) for v in sparse.values]),
                                      using=SPARSE, limit=prefetch)],
            # RRF's k given explicitly, as on Edge (the server's own default k differs)
            query=(models.RrfQuery(rrf=models.Rrf(k=rrf_k)) if fusion == "rrf"
                   else models.FusionQuery(fusion=models.Fusion.DBSF))).points
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def build_index(self, name: str, hnsw: Hnsw, *, timeout: float = 3600.0, poll: float = 0.5) -> dict:
        """Turn HNSW on (the server builds it once, over the loaded points) and wait green."""
        from qdrant_client import models

        start = time.perf_counter()
        self.client.update_collection(name, hnsw_config=models.HnswConfigDiff(
            m=hnsw.m, ef_construct=hnsw.ef_construct, on_disk=hnsw.on_disk))
        deadline = time.monotonic() + timeout
        while True:
            info = self.client.get_collection(name)
            if info.status == models.CollectionStatus.GREEN:
                return {"seconds": round(time.perf_counter() - start, 2), "m": hnsw.m,
                        "ef_construct": hnsw.ef_construct, "ef": hnsw.ef,
                        "indexed_vectors": info.indexed_vectors_count, "segments": info.segments_count}
            if info.status == models.CollectionStatus.RED:
                raise IndexingError(f"Qdrant reports collection {name} as red (failed optimisation)")
            if time.monotonic() > deadline:
                raise IndexingError(f"collection {name} still {info.status} after {timeout:.0f} s of indexing "
                                    "(index.green_timeout)")
            time.sleep(poll)

    def close(self) -> None:
        self.client.close()


def _classify(exc: Exception) -> tuple[str, str]:
    """("retry" | "auth" | "fatal", a short reason without secrets) for a failed call."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        code = exc.status_code
        if code in (401, 403):
            return "auth", f"HTTP {code}"
        return ("retry" if code in (502, 503, 504) else "fatal"), f"HTTP {code}"
    if isinstance(exc, ResponseHandlingException):
        return "retry", str(exc.source) if getattr(exc, "source", None) else type(exc).__name__
    try:
        import grpc

        if isinstance(exc, grpc.RpcError):
            code = exc.code()
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return "auth", code.name
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return "retry", f"gRPC {code.name}: connection refused or timed out"
            return "fatal", f"gRPC {code.name}"
    except ImportError:  # pragma: no cover - grpc ships with qdrant-client
        pass
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return "retry", type(exc).__name__
    return "fatal", type(exc).__name__
