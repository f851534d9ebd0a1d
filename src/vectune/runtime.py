"""The Ray runtime a command runs on: start a local Ray or join a cluster, as the spec's
`runtime` section says, with the environment every worker needs."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from vectune.spec.runtime import RuntimeSpec

log = logging.getLogger(__name__)

#: environment every Ray worker gets: offline model loading, quiet tokenizers
WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TQDM_DISABLE": "1",
}


def init_ray(runtime: RuntimeSpec, *, extra_env: dict[str, str] | None = None) -> bool:
    """Start or join Ray as the spec says. Returns True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    env = {**WORKER_ENV, **{k: v for k, v in os.environ.items() if k.startswith("VECTUNE_")}, **(extra_env or {})}
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    # worker output (Ray Train's per-step reports, its placement-group cleaner polling a
    # State API the local session runs without) reaches the terminal only when asked for:
    # `-v`, or VECTUNE_WORKER_LOGS=1. Worker errors still arrive as exceptions.
    worker_logs = os.environ.get("VECTUNE_VERBOSE") == "1" or os.environ.get("VECTUNE_WORKER_LOGS") == "1"
    kwargs: dict = {"runtime_env": {"env_vars": env}, "log_to_driver": worker_logs, "logging_level": logging.WARNING}
    if runtime.address == "local":
        kwargs.update(
            num_cpus=runtime.num_cpus,
            num_gpus=runtime.num_gpus,
            object_store_memory=runtime.object_store_memory,
            include_dashboard=False,
        )
        # a local session never joins a cluster that happens to run on this machine
        os.environ.pop("RAY_ADDRESS", None)
        # Ray starts workers at nice 15; on a shared workstation that hands every encode
        # and training step to whatever else runs. A local session is the user's job.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address="local", **kwargs)
    else:
        _join(runtime.address, runtime.connect_timeout, kwargs)
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return True


def _endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of a `host:port` or `ray://host:port` address; None for `auto`."""
    if address == "auto":
        return None
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _join(address: str, timeout: float, kwargs: dict) -> None:
    """`ray.init(address)` within `timeout` seconds, or ClusterError naming the address.

    Ray's own connect retries a GCS that does not answer for minutes (measured: over two
    for an address where nothing listens), so first a TCP connect says whether anything
    listens, then `ray.init` runs in a helper thread the caller stops waiting for.
    """
    import socket

    import ray

    from vectune._bounded import within
    from vectune._redact import redact
    from vectune.errors import ClusterError

    shown = redact(address)
    endpoint = _endpoint(address)
    if endpoint is not None:
        try:
            socket.create_connection(endpoint, timeout=min(timeout, 10.0)).close()
        except OSError as exc:
            raise ClusterError(f"runtime.address {shown}: nothing answers at {endpoint[0]}:{endpoint[1]} "
                               f"({exc.strerror or type(exc).__name__}); is the Ray head running, and the "
                               "port its GCS port (6379 by default) or Ray Client port (10001)?") from None
    expired = lambda: ClusterError(  # noqa: E731
        f"runtime.address {shown}: the Ray cluster did not answer within {timeout:g} s "
        "(runtime.connect_timeout); is it a Ray head, and reachable from here?")
    try:
        within(timeout, ray.init, address=address, expired=expired, **kwargs)
    except ConnectionError as exc:
        raise ClusterError(f"runtime.address {shown}: cannot join the Ray cluster: {redact(str(exc))}") from None


@contextmanager
def ray_session(runtime: RuntimeSpec):
    """Ray for the duration of a command; shut down only if this call started it."""
    import ray

    started = init_ray(runtime)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
