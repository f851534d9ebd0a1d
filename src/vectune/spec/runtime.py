"""The `runtime` section: where Ray runs and where run artifacts go."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator

from vectune.spec._base import Section


class RuntimeSpec(Section):
    """Ray and storage settings.

    `address` is `local` (start Ray in this process), `auto` (join the cluster this
    machine belongs to) or a `ray://` / `http://` address.
    """

    address: str = "local"
    num_cpus: int | None = Field(None, ge=1, le=100_000, description="CPUs for a local Ray; all when unset.")
    num_gpus: int | None = Field(None, ge=0, le=10_000)
    object_store_memory: int | None = Field(None, ge=78643200, le=1 << 50, description="Bytes, local Ray only.")
    runs: str = Field("runs", description="Run artifacts folder; the VECTUNE_RUNS variable overrides it.")
    storage: str | None = Field(
        None,
        description="Run artifacts on a multi-node cluster: an absolute path on a mount every node "
        "sees at the same place (NFS, CephFS, EFS, a Kubernetes ReadWriteMany volume). Takes "
        "precedence over `runs`; VECTUNE_RUNS overrides both.",
    )
    connect_timeout: float = Field(
        30.0, gt=0, le=3600, description="Seconds to wait for the Ray cluster at `address` to answer.")
    torch_threads: int | None = Field(None, ge=1, le=1024, description="Threads per torch process; Ray's share when unset.")
    driver_encode_max: int = Field(
        1000, ge=0, le=1_000_000,
        description="A corpus of at most this many documents is encoded in the driver process (one model "
        "load, shared with the queries' encoder) when Ray runs on one machine without GPUs for the stage, "
        "instead of starting encoder actors that each load the model (~6 s of a small evaluate here); "
        "0: always the actor pool.")
    tracking: Literal["none", "mlflow"] = Field(
        "none",
        description="`mlflow` (the `tracking` extra): each `vectune run` logs its parameters, per-stage "
        "metrics, the gate decision and the tuned model to an MLflow tracking URI.",
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI (a server, `sqlite:///...`); default: MLFLOW_TRACKING_URI, else a "
        "local store `<runs>/mlflow.db` with artifacts in `<runs>/mlflow-artifacts`.",
    )
    tracking_experiment: str | None = Field(None, description="MLflow experiment name; default: the spec's name.")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value in ("local", "auto") or "://" in value or ":" in value:
            return value
        raise ValueError("address must be `local`, `auto`, `host:port`, or a ray:// / http:// URL")

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str | None) -> str | None:
        # Every node resolves the folder on its own, so it must mean the same place
        # everywhere; run manifests are written with plain file I/O, so no URIs.
        if value is None:
            return value
        if "://" in value:
            raise ValueError(
                f"{value!r}: object-store URIs are not supported for run artifacts; mount the bucket "
                "(s3fs, gcsfuse, mountpoint-s3) on every node and give its absolute path"
            )
        if not os.path.isabs(value):
            raise ValueError(f"{value!r} must be an absolute path that every node of the cluster sees (a shared mount)")
        return value

    def runs_root(self) -> str:
        return os.environ.get("VECTUNE_RUNS") or self.storage or self.runs
