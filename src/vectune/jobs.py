"""Running the pipelines on a Ray cluster through Ray's Job Submission API.

`submit` ships a job that runs `python pipelines/<name>.py --spec vectune-spec.yaml` on the
cluster's head node. With it travel:

- a small staged working_dir: the `pipelines/` entrypoints and the spec *rendered for the
  cluster* (every data path absolute, `runtime.address: auto`, `runtime.storage` set);
- this vectune package (`py_modules`), so the cluster runs the client's code; its
  dependencies (torch, sentence-transformers, ...) must already be installed on the nodes,
  or be listed with `pip`;
- or, instead of both, a container image (`image_uri`: Ray runs the job in it with podman on
  every node; Ray accepts only `env_vars` and `config` next to it, so the spec travels in
  the `VECTUNE_SPEC_YAML` variable and the image must hold vectune and `pipelines/`).

Data paths are not copied: every node must see the files at the same path (a shared
mount) or read them from a URI. Run artifacts go to `runtime.storage`.

Token authentication: the client sends the token Ray finds in RAY_AUTH_TOKEN, the file
named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token. The token is never printed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

import yaml

from vectune.errors import EXIT_BAD_INPUT, EXIT_FAILURE, VectuneError
from vectune.spec import SPEC_ENV, Spec, render, validate_dict
from vectune.stages import PIPELINES

log = logging.getLogger(__name__)

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
SPEC_FILE = "vectune-spec.yaml"
#: never uploaded, wherever they appear in a shipped folder
EXCLUDES = [".venv", ".git", "runs", "benchmarks/results", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache"]
_ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_AUTH_HINT = ("the cluster uses Ray token authentication: export RAY_AUTH_MODE=token and the cluster's token "
              "as RAY_AUTH_TOKEN (or save it in ~/.ray/auth_token, or in a file named by RAY_AUTH_TOKEN_PATH)")


class ClusterError(VectuneError):
    """The cluster cannot be reached, refused a request, or does not know the job."""

    exit_code = EXIT_FAILURE


class SubmitError(VectuneError):
    """A submission cannot be prepared (unknown pipeline, no pipelines/ folder, bad options)."""

    exit_code = EXIT_BAD_INPUT


# -- connecting --------------------------------------------------------------------------------
def resolve_address(address: str | None) -> str:
    """`address`, else VECTUNE_RAY_ADDRESS, else RAY_ADDRESS."""
    address = address or os.environ.get("VECTUNE_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SubmitError("no cluster address: pass --address http://HEAD:8265 (the Ray dashboard) "
                          "or set VECTUNE_RAY_ADDRESS")
    return address


def token_source() -> str | None:
    """Where Ray will read the auth token from (a name, never the token), or None."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and Path(path).expanduser().is_file():
        return f"RAY_AUTH_TOKEN_PATH ({path})"
    if (Path.home() / ".ray" / "auth_token").is_file():
        return "~/.ray/auth_token"
    return None


def enable_token_auth() -> None:
    """Send the token when one is available and RAY_AUTH_MODE is unset.

    A cluster without authentication ignores the header, so sending it is harmless; a
    cluster with it (Ray's default) refuses clients that do not.
    """
    if os.environ.get("RAY_AUTH_MODE") or token_source() is None:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # Ray caches its config; re-read it so this process sees the new mode
        from ray._raylet import Config

        Config.initialize("")
    except Exception:  # pragma: no cover - depends on Ray internals
        log.debug("could not refresh Ray's config", exc_info=True)


def _scrub(text: str) -> str:
    token = os.environ.get("RAY_AUTH_TOKEN")
    return text.replace(token, "***") if token else text


def _cluster_error(address: str, exc: BaseException) -> ClusterError:
    message = _scrub(str(exc).strip()) or type(exc).__name__
    lowered = message.lower()
    if any(s in lowered for s in ("authentication", "unauthorized", "forbidden", " 401", " 403")):
        message = f"{message.splitlines()[0]}\n{_AUTH_HINT}"
    elif isinstance(exc, ConnectionError) or "connect" in lowered:
        message = f"{message.splitlines()[0]}\nis the Ray head running and its dashboard port (8265) reachable?"
    return ClusterError(f"Ray cluster {address}: {message}")


@contextmanager
def _explicit_address() -> Iterator[None]:
    # Ray's clients let RAY_ADDRESS override the address they are given; the user's
    # --address must win.
    saved = {k: os.environ.pop(k) for k in _ADDRESS_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def job_client(address: str | None, *, headers: dict | None = None, verify: bool | str = True):
    """A connected `JobSubmissionClient` (ClusterError with a hint when it cannot connect).

    `headers` (HTTP headers sent with every request, e.g. a proxy's authorization) and
    `verify` (check the server's TLS certificate: True, False, or a CA bundle's path) mean
    what `ray job submit --headers/--verify` mean."""
    address = resolve_address(address)
    enable_token_auth()
    from ray.job_submission import JobSubmissionClient

    with _explicit_address():
        return _request(address, JobSubmissionClient, address, headers=headers, verify=verify)


def parse_verify(value: str | bool | None) -> bool | str:
    """`--verify`'s text as Ray takes it: true/false, or the path of a CA bundle or folder."""
    if value is None:
        return True
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    if not Path(value).expanduser().exists():
        raise SubmitError(f"--verify {value!r}: neither true/false nor an existing CA certificate file or folder")
    return str(Path(value).expanduser())


#: seconds one request to a job server may take: Ray's job SDK sets no timeout, so a
#: server that accepts the connection and never answers would hold the command for ever
REQUEST_TIMEOUT = 60.0
#: a submission uploads the working folder and the wheel first: more time, still a bound
SUBMIT_TIMEOUT = 900.0


def _request(where: str, fn, *args, _seconds: float | None = None, **kwargs):
    from vectune._bounded import within

    seconds = _seconds or REQUEST_TIMEOUT
    expired = lambda: ClusterError(  # noqa: E731
        f"Ray cluster {where}: no answer within {seconds:g} s; is it the Ray dashboard's address "
        "(port 8265), and reachable from here?")
    try:
        return within(seconds, fn, *args, expired=expired, **kwargs)
    except ClusterError:
        raise
    except Exception as exc:
        raise _cluster_error(where, exc) from None


# -- what a job ships --------------------------------------------------------------------------
def cluster_spec(spec: Spec) -> dict:
    """The spec as the cluster must read it: every default, absolute paths, `address: auto`.

    `runtime.storage` becomes the folder this machine would write runs to (VECTUNE_RUNS,
    storage, or runs made absolute), so a one-machine cluster and a shared mount both work.
    """
    out = render(spec)
    out["runtime"]["address"] = "auto"  # the driver runs inside the cluster and joins it
    out["runtime"]["storage"] = spec.runs_root()
    base = Path(spec.model.base).expanduser()
    base = base if base.is_absolute() else spec.base_dir / base
    if base.is_dir():  # a local model folder, not a registry name or hub id
        out["model"]["base"] = str(base.resolve())
    if spec.mine.cross_encoder:
        out["mine"]["cross_encoder"] = spec.resolve(spec.mine.cross_encoder, data=False)
    qdrant = out.get("index", {}).get("qdrant", {})
    if qdrant.get("path") and qdrant["path"] != ":memory:":
        qdrant["path"] = spec.resolve(qdrant["path"], data=False)
    validate_dict(out, f"{spec.source or 'spec'} (rendered for the cluster)")
    return out


def storage_warning(spec: Spec) -> str | None:
    if spec.runtime.storage or os.environ.get("VECTUNE_RUNS"):
        return None
    return (f"runtime.storage is not set: runs go to {spec.runs_root()} on the node that runs the job "
            "driver; on a multi-node cluster set runtime.storage to a folder every node mounts")


def project_root(pipeline: str, working_dir: str | Path | None = None) -> Path:
    """The folder holding `pipelines/<pipeline>.py`: `working_dir` when given (`--working-dir`),
    else the working directory (or a parent), else the checkout this vectune was imported from."""
    import vectune

    if working_dir is not None:
        folder = Path(working_dir).expanduser().resolve()
        if not (folder / "pipelines" / f"{pipeline}.py").is_file():
            raise SubmitError(f"--working-dir {working_dir}: no pipelines/{pipeline}.py in it")
        return folder
    here = Path.cwd().resolve()
    candidates = [here, *here.parents, *Path(vectune.__file__).resolve().parents]
    for folder in candidates:
        if (folder / "pipelines" / f"{pipeline}.py").is_file():
            return folder
    raise SubmitError(f"pipelines/{pipeline}.py not found: run `vectune submit` inside a vectune checkout "
                      "(the folder with pipelines/), or pass --image to run an image that holds them")


def package_dir() -> Path:
    import vectune

    return Path(vectune.__file__).resolve().parent


def stage(pipeline: str, spec_yaml: str, working_dir: str | Path | None = None) -> Path:
    """A temp folder with pipelines/ (from `working_dir`, or the checkout) and the rendered
    spec: the job's working_dir."""
    folder = Path(tempfile.mkdtemp(prefix="vectune-job-"))
    shutil.copytree(project_root(pipeline, working_dir) / "pipelines", folder / "pipelines",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (folder / SPEC_FILE).write_text(spec_yaml, encoding="utf-8")
    return folder


def entrypoint(pipeline: str, *, image_workdir: str | None = None, run_id: str | None = None,
               model: str | None = None, full: bool = False) -> str:
    """The shell command the job runs."""
    args = [f"pipelines/{pipeline}.py"]
    if image_workdir is None:
        args += ["--spec", SPEC_FILE]  # image mode reads the spec from VECTUNE_SPEC_YAML
    if run_id:
        args += ["--run-id", run_id]
    if model:
        args += ["--model", model]
    if full:
        args += ["--full"]
    command = "python " + " ".join(shlex.quote(a) for a in args)
    return f"cd {shlex.quote(image_workdir)} && {command}" if image_workdir else command


#: runtime_env keys vectune sets itself: `--runtime-env-json` may not replace them
_OWN_ENV_KEYS = ("working_dir", "py_modules", "image_uri")


def merge_runtime_env(env: dict, extra: dict | None) -> dict:
    """`extra` (`--runtime-env-json`) over vectune's own runtime env: `env_vars` and `pip`
    are merged, other keys are added; replacing what vectune ships is refused."""
    if not extra:
        return env
    if not isinstance(extra, dict):
        raise SubmitError("--runtime-env-json must be a JSON object")
    taken = [k for k in _OWN_ENV_KEYS if k in extra and k in env]
    if taken:
        raise SubmitError(f"--runtime-env-json sets {', '.join(taken)}, which vectune sets for the job "
                          "(use --working-dir, --no-ship-code or --image instead)")
    out = {**env, **{k: v for k, v in extra.items() if k not in ("env_vars", "pip")}}
    if "env_vars" in extra:
        if SPEC_ENV in extra["env_vars"]:
            raise SubmitError(f"--runtime-env-json may not set {SPEC_ENV}: vectune sends the spec in it")
        out["env_vars"] = {**env.get("env_vars", {}), **extra["env_vars"]}
    if "pip" in extra:
        out["pip"] = [*env.get("pip", []), *extra["pip"]]
    return out


def runtime_env(*, working_dir: Path | None, spec_yaml: str, image: str | None = None,
                pip: list[str] | None = None, ship_package: bool = True, extra: dict | None = None) -> dict:
    """The job's runtime environment, `extra` merged in (validated by Ray's `RuntimeEnv`)."""
    from ray.runtime_env import RuntimeEnv

    if image:
        if pip:
            raise SubmitError("--pip cannot be combined with --image: Ray runs an image as it is "
                              "(install the packages into the image)")
        env: dict = {"image_uri": image, "env_vars": {SPEC_ENV: spec_yaml}}
    else:
        env = {"working_dir": str(working_dir), "excludes": list(EXCLUDES)}
        if ship_package:
            env["py_modules"] = [str(package_dir())]
        if pip:
            env["pip"] = list(pip)
    env = merge_runtime_env(env, extra)
    try:
        RuntimeEnv(**env)
    except (ValueError, TypeError) as exc:
        raise SubmitError(f"invalid Ray runtime environment: {exc}") from None
    return env


# -- submitting and following ------------------------------------------------------------------
def submit(spec: Spec, *, address: str | None = None, pipeline: str = "finetune", wait: bool = True,
           image: str | None = None, image_workdir: str = "/app", run_id: str | None = None,
           model: str | None = None, full: bool = False, pip: list[str] | None = None, ship_package: bool = True,
           logs: TextIO | None = None, submission_id: str | None = None, runtime_env_json: dict | None = None,
           working_dir: str | Path | None = None, metadata: dict | None = None,
           entrypoint_num_cpus: float | None = None, entrypoint_num_gpus: float | None = None,
           entrypoint_memory: int | None = None, entrypoint_resources: dict | None = None,
           headers: dict | None = None, verify: bool | str = True) -> dict:
    """Submit `pipelines/<pipeline>.py` for `spec`; with `wait` (the default, as `ray job
    submit`), stream its logs to `logs` until it ends. Returns the job's id and, when
    waiting, its final status and exit code.

    `submission_id`, `runtime_env_json`, `working_dir`, `metadata` and the `entrypoint_*`
    resources (`entrypoint_resources`: custom resources) and `headers`/`verify` mean what
    they mean to `ray job submit`: `working_dir` is the folder whose
    `pipelines/` the job runs; `runtime_env_json` is merged into what vectune ships."""
    if pipeline not in PIPELINES:
        raise SubmitError(f"unknown pipeline {pipeline!r}; one of {', '.join(PIPELINES)}")
    if model and pipeline == "finetune":
        raise SubmitError("--model applies to the reindex and evaluate pipelines (finetune trains its own)")
    if full and pipeline != "reindex":
        raise SubmitError("--full applies to the reindex pipeline (finetune always builds in full after its gate)")
    if model and not image and Path(model).expanduser().is_dir():
        model = str(Path(model).expanduser().resolve())
    spec_yaml = yaml.safe_dump(cluster_spec(spec), sort_keys=False)
    warning = storage_warning(spec)
    if warning:
        log.warning(warning)
    address = resolve_address(address)
    client = job_client(address, headers=headers, verify=verify)
    if image and working_dir is not None:
        raise SubmitError("--working-dir cannot be combined with --image: the image holds pipelines/ "
                          "(--image-workdir names where)")
    folder = None if image else stage(pipeline, spec_yaml, working_dir)
    try:
        env = runtime_env(working_dir=folder, spec_yaml=spec_yaml, image=image, pip=pip, ship_package=ship_package,
                          extra=runtime_env_json)
        command = entrypoint(pipeline, image_workdir=image_workdir if image else None, run_id=run_id, model=model,
                             full=full)
        meta = {**(metadata or {}), "vectune_spec": spec.name, "vectune_pipeline": pipeline,
                "vectune_spec_hash": spec.digest()}
        if run_id:
            meta["vectune_run_id"] = run_id
        resources = {k: v for k, v in (("entrypoint_num_cpus", entrypoint_num_cpus),
                                       ("entrypoint_num_gpus", entrypoint_num_gpus),
                                       ("entrypoint_memory", entrypoint_memory),
                                       ("entrypoint_resources", entrypoint_resources)) if v is not None}
        with _explicit_address():
            job_id = _request(address, client.submit_job, _seconds=SUBMIT_TIMEOUT, entrypoint=command, runtime_env=env, metadata=meta,
                              submission_id=submission_id, **resources)
    finally:
        if folder is not None:  # uploaded by submit_job; the local copy is no longer needed
            shutil.rmtree(folder, ignore_errors=True)
    result = {"job_id": job_id, "address": address, "pipeline": pipeline, "entrypoint": command,
              "storage": spec.runs_root(), "warnings": [warning] if warning else []}
    if wait:
        try:
            result.update(follow(client, job_id, address=address, out=logs or sys.stdout))
        except KeyboardInterrupt:
            log.warning("stopped following; job %s keeps running: vectune jobs stop %s --address %s",
                        job_id, job_id, address)
            raise
    return result


def exit_code(status: dict) -> int:
    """0 only for SUCCEEDED; a failed driver's own exit code (a VectuneError's) otherwise."""
    if status.get("status") == "SUCCEEDED":
        return 0
    code = status.get("driver_exit_code")
    return code if isinstance(code, int) and code > 0 else EXIT_FAILURE


def summary(info) -> dict:
    """A job's state as plain data (no runtime_env: it may carry the spec)."""
    status = getattr(info.status, "value", str(info.status))
    return {
        "job_id": info.submission_id or info.job_id,
        "status": status,
        "message": info.message,
        "driver_exit_code": info.driver_exit_code,
        "ray_job_id": info.job_id,
        "entrypoint": info.entrypoint,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "metadata": info.metadata or {},
    }


def status(job_id: str, *, address: str | None = None, nodes: bool = False, headers: dict | None = None,
           verify: bool | str = True) -> dict:
    """A job's status; with `nodes`, which cluster nodes ran its actors and tasks."""
    address = resolve_address(address)
    client = job_client(address, headers=headers, verify=verify)
    with _explicit_address():
        out = summary(_request(address, client.get_job_info, job_id))
    out["exit_code"] = exit_code(out) if out["status"] in TERMINAL else None
    if nodes:
        try:
            out["nodes"] = job_nodes(out["ray_job_id"], address=address)
        except ClusterError as exc:  # the state API is optional; the status is not
            out["nodes"], out["nodes_error"] = {}, str(exc)
    return out


def list_jobs(*, address: str | None = None, headers: dict | None = None, verify: bool | str = True) -> list[dict]:
    address = resolve_address(address)
    client = job_client(address, headers=headers, verify=verify)
    with _explicit_address():
        jobs = _request(address, client.list_jobs)
    return [summary(j) for j in jobs if j.submission_id]


def logs(job_id: str, *, address: str | None = None, follow_logs: bool = False, out: TextIO | None = None,
         headers: dict | None = None, verify: bool | str = True) -> dict:
    """Print a job's logs (all so far, or following them until the job ends)."""
    out = out or sys.stdout
    address = resolve_address(address)
    client = job_client(address, headers=headers, verify=verify)
    if follow_logs:
        return follow(client, job_id, address=address, out=out)
    with _explicit_address():
        out.write(_scrub(_request(address, client.get_job_logs, job_id)))
    out.flush()
    return status(job_id, address=address, headers=headers, verify=verify)


def stop(job_id: str, *, address: str | None = None, wait_s: float = 30.0, headers: dict | None = None,
         verify: bool | str = True) -> dict:
    """Ask the cluster to stop a job and wait (up to `wait_s`) until it has."""
    address = resolve_address(address)
    client = job_client(address, headers=headers, verify=verify)
    with _explicit_address():
        stopped = _request(address, client.stop_job, job_id)
        deadline = time.monotonic() + wait_s
        info = _request(address, client.get_job_info, job_id)
        while getattr(info.status, "value", str(info.status)) not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.5)
            info = _request(address, client.get_job_info, job_id)
    out = summary(info)
    out["stop_requested"] = bool(stopped)
    return out


def follow(client, job_id: str, *, address: str, out: TextIO) -> dict:
    """Stream a job's logs until it ends; returns its final status with `exit_code`."""
    written = 0

    async def tail() -> None:
        nonlocal written
        async for chunk in client.tail_job_logs(job_id):
            out.write(_scrub(chunk))
            out.flush()
            written += len(chunk)

    with _explicit_address():
        try:
            asyncio.run(tail())
            tailed = True
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # an older server or a dropped websocket: poll instead
            log.debug("log tail failed (%s); polling", exc)
            tailed = False
        info = _request(address, client.get_job_info, job_id)
        while getattr(info.status, "value", str(info.status)) not in TERMINAL:
            time.sleep(1.0)
            info = _request(address, client.get_job_info, job_id)
        if not tailed:
            rest = _request(address, client.get_job_logs, job_id)[written:]
            out.write(_scrub(rest))
            out.flush()
    result = summary(info)
    result["exit_code"] = exit_code(result)
    return result


def job_nodes(ray_job_id: str | None, *, address: str) -> dict:
    """Per node id: its address, whether it is the head, its resources, and the job's actors
    (count by class) and tasks (count by name, actor method calls included) that ran there.
    Covers the job's last Ray driver (a pipeline connects once)."""
    if not ray_job_id:
        return {}
    from ray.util.state import list_actors, list_nodes, list_tasks

    def query(fn, **kwargs):
        return _request(address, fn, address=address, raise_on_missing_output=False, timeout=30, **kwargs)

    with _explicit_address():
        known = {n.node_id: n for n in query(list_nodes, limit=1000)}
        actors = query(list_actors, filters=[("job_id", "=", ray_job_id)], limit=10000)
        tasks = query(list_tasks, filters=[("job_id", "=", ray_job_id)], limit=10000)
    out: dict[str, dict] = {}

    def entry(node_id: str) -> dict:
        if node_id not in out:
            node = known.get(node_id)
            out[node_id] = {"ip": getattr(node, "node_ip", None), "head": bool(getattr(node, "is_head_node", False)),
                            "resources": dict(getattr(node, "resources_total", {}) or {}), "actors": {}, "tasks": {}}
        return out[node_id]

    for actor in actors:
        if actor.node_id:
            classes = entry(actor.node_id)["actors"]
            classes[actor.class_name] = classes.get(actor.class_name, 0) + 1
    for task in tasks:
        if task.node_id:
            names = entry(task.node_id)["tasks"]
            names[task.name] = names.get(task.name, 0) + 1
    return out
