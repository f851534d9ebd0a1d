"""The `runtime` section: where Ray runs and where run artifacts go."""

from __future__ import annotations

import os

from pydantic import Field, field_validator

from vectune.spec._base import Section


class RuntimeSpec(Section):
    """Ray and storage settings.

    `address` is `local` (start Ray in this process), `auto` (join the cluster this
    machine belongs to) or a `ray://` / `http://` address.
    """

    address: str = "local"
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray; all when unset.")
    num_gpus: int | None = Field(None, ge=0)
    object_store_memory: int | None = Field(None, ge=78643200, description="Bytes, local Ray only.")
    runs: str = Field("runs", description="Run artifacts folder; the VECTUNE_RUNS variable overrides it.")
    storage: str | None = Field(
        None,
        description="Shared location every node can read (a pyarrow URI or a shared mount) "
        "for run artifacts on a multi-node cluster; defaults to `runs`.",
    )
    torch_threads: int | None = Field(None, ge=1, description="Threads per torch process; Ray's share when unset.")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value in ("local", "auto") or "://" in value or ":" in value:
            return value
        raise ValueError("address must be `local`, `auto`, `host:port`, or a ray:// / http:// URL")

    def runs_root(self) -> str:
        return os.environ.get("VECTUNE_RUNS") or self.storage or self.runs
