"""`vectune submit` and `vectune jobs ...`: run the pipelines on a Ray cluster (Jobs API)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from vectune.commands._options import RunOpt, SetOpt, VerboseOpt, call, load
from vectune.stages import Pipeline

AddressOpt = Annotated[Optional[str], typer.Option(
    "--address", envvar=["VECTUNE_RAY_ADDRESS", "RAY_ADDRESS"], show_envvar=True,
    help="The cluster's dashboard URL (http://HEAD:8265), or a Ray address.")]
HeadersOpt = Annotated[Optional[str], typer.Option(
    "--headers", metavar="JSON", help="HTTP headers sent with every request to the job server, as a JSON "
    "object (a proxy's authorization, say), as for `ray job submit`.")]
VerifyOpt = Annotated[str, typer.Option(
    "--verify", help="Verify the job server's TLS certificate: true, false, or the path of a CA bundle "
    "or folder, as for `ray job submit`.")]
JobArg = Annotated[str, typer.Argument(help="The submission id `vectune submit` printed (raysubmit_...).",
                                       show_default=False)]

jobs_app = typer.Typer(name="jobs", help="Follow, inspect and stop jobs submitted to a Ray cluster.",
                       no_args_is_help=True)


def _print_status(info: dict) -> None:
    from vectune import _console as console

    items = {"job": info["job_id"], "status": info["status"]}
    if info.get("exit_code") is not None:
        items["exit code"] = info["exit_code"]
    meta = info.get("metadata") or {}
    for key in ("vectune_spec", "vectune_pipeline", "vectune_run_id"):
        if key in meta:
            items[key.removeprefix("vectune_").replace("_", " ")] = meta[key]
    items["entrypoint"] = info.get("entrypoint")
    if info.get("message"):
        items["message"] = info["message"]
    console.out.print(console.kv_table("Ray job", {k: escape(str(v)) for k, v in items.items()}))
    for node_id, node in (info.get("nodes") or {}).items():
        role = "head" if node["head"] else "worker"
        actors = ", ".join(f"{n} x {escape(c)}" for c, n in sorted(node["actors"].items())) or "-"
        tasks = sum(node["tasks"].values())
        console.out.print(f"node {node_id[:12]} ({node['ip']}, {role}): {tasks} tasks; actors: {actors}")


def _connection(headers: Optional[str], verify: str) -> dict:
    """`--headers` and `--verify` as the job client takes them (bad values: exit 2)."""
    from vectune import jobs

    try:
        checked = jobs.parse_verify(verify)
    except jobs.SubmitError as exc:
        raise typer.BadParameter(str(exc), param_hint="--verify") from None
    return {"headers": _json_object(headers, "--headers"), "verify": checked}


def _runtime_env_file(path: Optional[str]) -> Optional[dict]:
    """`--runtime-env FILE`: a YAML mapping of Ray runtime_env keys (bad file: exit 2, named)."""
    if path is None:
        return None
    import yaml

    try:
        parsed = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise typer.BadParameter(f"{path}: cannot read it ({exc.strerror or exc})", param_hint="--runtime-env") \
            from None
    except yaml.YAMLError as exc:
        raise typer.BadParameter(f"{path}: not valid YAML: {exc}", param_hint="--runtime-env") from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter(f"{path}: must hold a mapping of runtime_env keys", param_hint="--runtime-env")
    return parsed


def _json_object(value: Optional[str], hint: Optional[str] = None) -> Optional[dict]:
    """A `--*-json` option's text as a JSON object (bad JSON is a usage error: exit 2)."""
    if value is None:
        return None
    import json

    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint=hint) from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter("must be a JSON object ({...})", param_hint=hint)
    return parsed


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""

    # The options that `ray job submit` also has keep its names, defaults and meaning
    # (--address, --submission-id, --runtime-env, --runtime-env-json, --metadata-json,
    # --working-dir, --entrypoint-num-cpus/-gpus/-memory/-resources, --headers, --verify,
    # waiting unless --no-wait, -v).
    @app.command()
    def submit(
        spec: Annotated[str, typer.Argument(help="The YAML spec (rendered and shipped with the job).",
                                            show_default=False)],
        address: AddressOpt = None,
        pipeline: Annotated[Pipeline, typer.Option(help="finetune (the whole pipeline), reindex or evaluate.")
                            ] = Pipeline.finetune,
        wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Stream the job's logs until it ends and exit "
                                           "with its result (0 only if it SUCCEEDED), as `ray job submit` does; "
                                           "--no-wait prints the submission id and returns.")] = True,
        submission_id: Annotated[Optional[str], typer.Option("--submission-id", help="The job's submission id "
                                                             "(default: one Ray generates).")] = None,
        runtime_env_file: Annotated[Optional[str], typer.Option(
            "--runtime-env", metavar="FILE", help="A YAML file of Ray runtime_env keys, merged like "
            "--runtime-env-json (give one of the two).")] = None,
        runtime_env_json: Annotated[Optional[str], typer.Option(
            "--runtime-env-json", metavar="JSON", help="Ray runtime_env keys merged into the job's (env_vars and "
            "pip are merged; working_dir, py_modules and image_uri stay vectune's).")] = None,
        metadata_json: Annotated[Optional[str], typer.Option("--metadata-json", metavar="JSON",
                                                             help="Job metadata, beside vectune's own.")] = None,
        working_dir: Annotated[Optional[str], typer.Option("--working-dir", help="The folder whose pipelines/ the "
                                                           "job runs (default: this vectune checkout).")] = None,
        entrypoint_num_cpus: Annotated[Optional[float], typer.Option(
            "--entrypoint-num-cpus", min=0, help="CPUs reserved for the job's driver.")] = None,
        entrypoint_num_gpus: Annotated[Optional[float], typer.Option(
            "--entrypoint-num-gpus", min=0, help="GPUs reserved for the job's driver.")] = None,
        entrypoint_memory: Annotated[Optional[int], typer.Option(
            "--entrypoint-memory", min=0, help="Memory (bytes) reserved for the job's driver.")] = None,
        entrypoint_resources: Annotated[Optional[str], typer.Option(
            "--entrypoint-resources", metavar="JSON", help="Custom resources reserved for the job's driver, "
            'as a JSON object ({"accelerator": 1}).')] = None,
        headers: HeadersOpt = None,
        verify: VerifyOpt = "True",
        image: Annotated[Optional[str], typer.Option(help="Run the job in this container image (Ray `image_uri`: "
                                                     "podman on every node; the image holds vectune and "
                                                     "pipelines/).")] = None,
        image_workdir: Annotated[str, typer.Option(help="The folder holding pipelines/ inside --image.")] = "/app",
        run_id: RunOpt = None,
        model: Annotated[Optional[str], typer.Option("--model", "-m", help="reindex/evaluate: this model instead "
                                                     "of the default one (a path every node sees).")] = None,
        full: Annotated[bool, typer.Option("--full", help="reindex: build a new collection even when the live "
                                           "one could be synced in place.")] = False,
        pip: Annotated[Optional[list[str]], typer.Option("--pip", help="Extra pip package for the job's "
                                                         "environment (repeatable).")] = None,
        ship_code: Annotated[bool, typer.Option("--ship-code/--no-ship-code", help="Upload this vectune "
                                                "package with the job (off: use the one on the nodes).")] = True,
        sets: SetOpt = None,
        json_: Annotated[bool, typer.Option("--json", help="Result as JSON on stdout; job logs go to stderr.")] = False,
        verbose: VerboseOpt = False,
    ) -> None:
        """Run a pipeline on a Ray cluster through the Jobs API (as `ray job submit` does)."""
        from vectune import _console as console
        from vectune import jobs

        if runtime_env_file is not None and runtime_env_json is not None:
            raise typer.BadParameter("give --runtime-env or --runtime-env-json, not both", param_hint="--runtime-env")
        env_extra = _runtime_env_file(runtime_env_file) or _json_object(runtime_env_json, "--runtime-env-json")
        metadata = _json_object(metadata_json, "--metadata-json")
        resources = _json_object(entrypoint_resources, "--entrypoint-resources")
        connection = _connection(headers, verify)
        s = load(Path(spec), sets)
        result = call(jobs.submit, s, address=address, pipeline=pipeline.value, wait=wait, image=image,
                      image_workdir=image_workdir, run_id=run_id, model=model, full=full, pip=pip, ship_package=ship_code,
                      logs=sys.stderr if json_ else sys.stdout, verbose=verbose, submission_id=submission_id,
                      runtime_env_json=env_extra, metadata=metadata, working_dir=working_dir,
                      entrypoint_num_cpus=entrypoint_num_cpus, entrypoint_num_gpus=entrypoint_num_gpus,
                      entrypoint_memory=entrypoint_memory, entrypoint_resources=resources, **connection)
        if json_:
            console.emit_json(result)
        elif not wait:
            console.out.print(f"submitted {result['job_id']} ({pipeline.value}) to {result['address']}", markup=False)
            console.out.print(f"  vectune jobs logs {result['job_id']} --follow --address {result['address']}",
                              markup=False)
        else:
            console.err.print(f"job {result['job_id']} {result['status']} (exit code {result['exit_code']})",
                              markup=False, highlight=False)
        if wait:
            raise typer.Exit(result["exit_code"])

    app.add_typer(jobs_app)


@jobs_app.command("status")
def status(job_id: JobArg, address: AddressOpt = None, headers: HeadersOpt = None, verify: VerifyOpt = "True",
           nodes: Annotated[bool, typer.Option("--nodes/--no-nodes", help="Which nodes ran the job's actors "
                                               "and tasks (Ray state API).")] = True,
           json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A job's status, exit code and the nodes that did its work."""
    from vectune import _console as console
    from vectune import jobs

    info = call(jobs.status, job_id, address=address, nodes=nodes, **_connection(headers, verify))
    if json_:
        console.emit_json(info)
    else:
        _print_status(info)


@jobs_app.command("logs")
def logs(job_id: JobArg, address: AddressOpt = None, headers: HeadersOpt = None, verify: VerifyOpt = "True",
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming until the job ends; "
                                              "exit with its result.")] = False) -> None:
    """Print a job's logs."""
    from vectune import jobs

    info = call(jobs.logs, job_id, address=address, follow_logs=follow, **_connection(headers, verify))
    if follow:
        raise typer.Exit(info["exit_code"])


@jobs_app.command("stop")
def stop(job_id: JobArg, address: AddressOpt = None, headers: HeadersOpt = None, verify: VerifyOpt = "True",
         json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Stop a running job (its driver, actors and tasks)."""
    from vectune import _console as console
    from vectune import jobs

    info = call(jobs.stop, job_id, address=address, **_connection(headers, verify))
    if json_:
        console.emit_json(info)
    else:
        console.out.print(f"job {info['job_id']}: {info['status']}", markup=False)


@jobs_app.command("list")
def list_(address: AddressOpt = None, headers: HeadersOpt = None, verify: VerifyOpt = "True",
          json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Jobs submitted to the cluster, newest first."""
    from rich.table import Table

    from vectune import _console as console
    from vectune import jobs

    rows = sorted(call(jobs.list_jobs, address=address, **_connection(headers, verify)),
                  key=lambda j: j["start_time"] or 0, reverse=True)
    if json_:
        console.emit_json(rows)
        return
    table = Table(title="Ray jobs")
    for col in ("job", "status", "pipeline", "spec", "started"):
        table.add_column(col)
    for job in rows:
        meta = job["metadata"]
        started = _time(job["start_time"])
        table.add_row(escape(job["job_id"]), job["status"], escape(meta.get("vectune_pipeline", "-")),
                      escape(meta.get("vectune_spec", "-")), started)
    console.out.print(table)


def _time(ms: int | None) -> str:
    from datetime import datetime, timezone

    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
