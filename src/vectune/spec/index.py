"""The `index` section: the Qdrant collection the corpus vectors are served from."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from vectune.spec._base import Section

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,180}$")  # + "__<run id>" (<= 66) within Qdrant's 255


class QdrantSpec(Section):
    """Where Qdrant is: the embedded engine (Qdrant Edge in-process, `path`) or a server (`url`)."""

    path: str | None = Field(None, description="Embedded engine (Qdrant Edge) folder: one shard per collection "
                                               "version, the alias and stamps beside them; `:memory:` for a "
                                               "temporary one. Default <runs>/qdrant.")
    url: str | None = None
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key.")
    prefer_grpc: bool = False
    timeout: float = Field(30.0, gt=0, le=3600, description="Seconds per request (connect and read).")
    retries: int = Field(3, ge=0, le=20, description="Connection attempts beyond the first, with backoff.")

    @model_validator(mode="after")
    def _one_place(self) -> "QdrantSpec":
        if self.path and self.url:
            raise ValueError("set either `path` (embedded engine) or `url` (server), not both")
        if self.api_key_env and not self.url:
            raise ValueError("`api_key_env` only applies to a server `url`")
        return self


class HnswSpec(Section):
    """The HNSW index, built once after the bulk load (both engines) and searched with `ef`.

    Defaults chosen with benchmarks/hnsw.py and benchmarks/scale.py on Qdrant Edge (README, "HNSW
    settings"): at 200,000 clustered 384-d points, search `ef` 256 lifts recall@10 against exact
    search from 0.951 (the engine's default, ef = ef_construct) to 0.968 for ~0.3 ms a query, while
    ef_construct 200 adds 0.004 at about twice the build; harder data needs `m: 32` (about 2-4x the
    build time). A fixed `ef` does not hold recall as the shard grows (at 1,000,000 points ef 256
    gives 0.929, 512 gives 0.965), so the default, `auto`, sizes it from the point count: see
    `vectune.index.store.auto_ef`.
    """

    m: int = Field(16, ge=0, le=1024, description="Edges per node of the graph.")
    ef_construct: int = Field(100, ge=4, le=100_000, description="Candidates kept while building the graph.")
    ef: Annotated[int, Field(ge=1, le=100_000)] | Literal["auto"] | None = Field(
        "auto", description="Candidates kept while searching (`hnsw_ef`): a number (1-100000); `auto`: sized from "
                            "the collection's point count when it is built or synced (256 up to 250,000 points, "
                            "growing with the square root beyond: 512 at 1,000,000), stamped on the collection; "
                            "null: the engine's default (ef_construct).")
    on_disk: bool = False


class IndexSpec(Section):
    qdrant: QdrantSpec = Field(default_factory=QdrantSpec)
    collection: str | None = Field(None, description="Base collection name; defaults to the spec `name`.")
    alias: str | None = Field(None, description="Alias readers query; defaults to the collection name.")
    distance: Literal["cosine", "dot", "euclid"] = "cosine"
    sparse: Literal["none", "bm25"] = Field(
        "none", description="bm25: store Qdrant's BM25 sparse vector (the `bm25` section's settings, `idf` modifier) "
                            "beside the dense one in every point, for search.mode: hybrid.")
    hnsw: HnswSpec = Field(default_factory=HnswSpec)
    on_disk_vectors: bool = False
    shards: int = Field(1, ge=1, le=1024, description="A server's shards per collection.")
    shard_points: int | None = Field(
        100_000, ge=10, le=1_000_000_000,
        description="Embedded engine (Qdrant Edge): most points per shard. A larger collection version is held in "
                    "several shards, filled one at a time; each is indexed (HNSW) and closed when full, so the "
                    "writer's memory is one shard's whatever the corpus size. Searches query every shard and "
                    "merge (about 1 ms a shard per query at 100,000 points). null: one shard (fastest search, "
                    "the writer then holds the whole collection while it builds).")
    replication: int = Field(1, ge=1, le=64)
    batch_size: int = Field(256, ge=1, le=65_536, description="Points per upsert request.")
    parallel: int = Field(1, ge=1, le=256, description="Concurrent writers (a server only; the embedded engine has one).")
    embed_batch_size: int = Field(1024, ge=1, le=1 << 20, description="Documents per Ray Data batch handed to `encode`.")
    concurrency: int | None = Field(
        None, ge=1, le=4096, description="Encoder actors (one model copy each); sized to the cluster's CPUs when unset, "
        "as in `evaluate`."
    )
    num_gpus: float = Field(0, ge=0, le=64, description="GPUs per encoder actor.")
    payload: list[str] = Field(default_factory=lambda: ["doc_id", "title", "text"],
                               description="Document fields stored with each point; `doc_id` is always stored.")
    keep: int = Field(2, ge=0, le=1000, description="Previous collections kept for rollback.")
    verify_sample: int = Field(32, ge=1, le=100_000, description="Points whose stored vectors are checked against a fresh embedding.")
    lease_ttl: float = Field(
        60.0, ge=2, le=3600, description="Seconds after its last heartbeat that a writer's lease on the alias "
                                         "expires (a crashed writer blocks no longer than this).")
    green_timeout: float = Field(3600.0, gt=0, le=7 * 86400, description="Seconds to wait for the server to rebuild HNSW (status green).")

    @field_validator("collection", "alias")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError("use letters, digits, `_` and `-` only")
        return value

    @field_validator("payload")
    @classmethod
    def _payload(cls, value: list[str]) -> list[str]:
        allowed = {"doc_id", "title", "text"}
        bad = [v for v in value if v not in allowed]
        if bad:
            raise ValueError(f"unknown payload fields {bad}; choose from {sorted(allowed)}")
        return value
