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
        ray.init(address=runtime.address, **kwargs)
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return True


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
