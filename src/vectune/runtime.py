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
    # Ray Train swaps a training worker's `print` for one that also logs every printed line
    # at INFO through the root logger, to stderr, even when the printer had pointed
    # `sys.stdout` elsewhere. dill, which fingerprints every Hugging Face `datasets` Dataset
    # built in a worker, finds a function's globals by printing its disassembly (`dis.dis`)
    # into a captured stdout: so each Dataset put a bytecode listing on stderr. Unpatched,
    # a print goes where it was meant to (the captured stream, or the worker's stdout).
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}

#: what workers get unless everything is asked for (`-v`, VECTUNE_WORKER_LOGS=1) or the
#: driver's environment says otherwise. Ray Train leaves logging alone: its own setup would
#: put the root logger of each training worker at INFO with a console handler (every
#: library's INFO line on stderr, so on the driver), and its controller's `ray.train` lines
#: (per-step reports, worker group starts) on the console. Ray Data, iterating a training
#: worker's shard, keeps its INFO lines to itself, as on the driver (`_console.setup_logging`).
QUIET_WORKER_ENV = {
    "RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING": "0",
    "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",
    "RAY_DATA_LOG_LEVEL": "ERROR",
}

#: Ray's loggers in a worker, quiet but for errors unless everything is asked for (as the
#: driver's are, `vectune._console.setup_logging`): their warnings are Ray's housekeeping,
#: such as Ray Train's placement-group cleaner polling a State API that a local session
#: without a dashboard does not have, a warning every few seconds of a training run.
RAY_LOGGERS = ("ray", "ray.train", "ray.tune")

#: the variable Ray hands a job's `worker_process_setup_hook` to its workers in
_HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"


def quiet_worker_logging() -> None:
    """Ray's `worker_process_setup_hook` unless everything is asked for: in every worker of
    the job, warnings and errors of any logger (vectune's among them) go to the worker's
    stderr, which Ray forwards to the driver's; INFO lines, Ray's own warnings and the
    dependencies' deprecation notices (addressed to vectune's code, not to its user) do not.
    Secrets are masked in what goes out, as in the driver's own lines. What a worker prints
    goes to its stderr too (file descriptor 1 onto 2): Ray forwards a worker's stdout to the
    driver's stdout, which carries `--json` results, so nothing a worker prints lands there."""
    import sys
    import warnings

    from vectune._redact import RedactingFilter

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    if not root.handlers:
        handler = logging.StreamHandler()  # sys.stderr: the worker's .err file
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())


def worker_logs_wanted() -> bool:
    """Whether everything workers write reaches the terminal (`-v`, or VECTUNE_WORKER_LOGS=1)."""
    return os.environ.get("VECTUNE_VERBOSE") == "1" or os.environ.get("VECTUNE_WORKER_LOGS") == "1"


def init_ray(runtime: RuntimeSpec, *, extra_env: dict[str, str] | None = None) -> bool:
    """Start or join Ray as the spec says. Returns True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    everything = worker_logs_wanted()
    quiet = {} if everything else {k: os.environ.get(k, v) for k, v in QUIET_WORKER_ENV.items()}
    env = {**WORKER_ENV, **quiet, **{k: v for k, v in os.environ.items() if k.startswith("VECTUNE_")},
           **(extra_env or {})}
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    runtime_env: dict = {"env_vars": env}
    # Workers' warnings reach the driver's stderr (Ray forwards each worker's stderr). By
    # default that is all they say there: a setup hook in every worker sends warnings and
    # errors to stderr and drops INFO lines and Ray's own warnings, and sends what workers
    # print to stderr as well, never to the driver's stdout (`--json` results). With `-v` or
    # VECTUNE_WORKER_LOGS=1, everything, as Ray forwards it.
    if not everything and _HOOK_ENV not in os.environ:  # a job's own hook is left alone
        runtime_env["worker_process_setup_hook"] = f"{__name__}.{quiet_worker_logging.__name__}"
    kwargs: dict = {"runtime_env": runtime_env, "log_to_driver": True, "logging_level": logging.WARNING}
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
