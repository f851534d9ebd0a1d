"""The `vectune` command: parses arguments and delegates to `vectune.pipeline`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.markup import escape

from vectune import _console as console
from vectune.errors import EXIT_FAILURE, SpecError, VectuneError

app = typer.Typer(
    name="vectune",
    help="Adapt an embedding model to your domain on Ray, and re-index Qdrant without downtime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

SpecArg = Annotated[Path, typer.Argument(help="The YAML spec.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout; logs go to stderr.")]
RunOpt = Annotated[Optional[str], typer.Option("--run-id", help="Reuse (resume) this run instead of a new one.",
                                               envvar="VECTUNE_RUN_ID")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs.")]


def _fail(exc: BaseException) -> None:
    # messages quote user data (ids, paths, YAML): escape it, or `[/x]` is read as markup
    if isinstance(exc, SpecError):
        console.err.print(f"[bold red]invalid spec[/] {escape(exc.source)}", highlight=False)
        for problem in exc.problems:
            console.err.print(f"  - {problem}", markup=False, highlight=False)
    else:
        console.err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False)
    code = exc.exit_code if isinstance(exc, VectuneError) else EXIT_FAILURE
    raise typer.Exit(code)


def _call(fn, *args, verbose: bool = False, **kwargs):
    """Run a library call with vectune's error contract: message on stderr, exit code, no traceback."""
    console.setup_logging(verbose)
    try:
        return fn(*args, **kwargs)
    except VectuneError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        console.err.print("interrupted")
        raise typer.Exit(130) from None


def _load(spec: Path):
    from vectune.spec import load_spec

    return load_spec(spec)


@app.command()
def validate(spec: SpecArg, json_: JsonOpt = False) -> None:
    """Check a spec: every problem at once, with field paths and YAML lines."""
    s = _call(_load, spec)
    if json_:
        console.emit_json({"valid": True, "spec": str(spec), "name": s.name, "hash": s.digest()})
    else:
        console.out.print(f"[green]valid[/] {escape(str(spec))} (name {s.name}, hash {s.digest()})")


@app.command()
def render(spec: SpecArg, json_: JsonOpt = False) -> None:
    """Print the spec with every default filled in and every path resolved."""
    from vectune.spec import render as render_spec

    rendered = render_spec(_call(_load, spec))
    if json_:
        console.emit_json(rendered)
    else:
        sys.stdout.write(yaml.safe_dump(rendered, sort_keys=False))


@app.command()
def schema() -> None:
    """Print the spec's JSON Schema (for editor completion and validation)."""
    from vectune.spec import json_schema

    console.emit_json(json_schema())


@app.command()
def evaluate(
    spec: SpecArg,
    model: Annotated[Optional[str], typer.Option(help="A model folder or name instead of the spec's base model.")] = None,
    split: Annotated[Optional[str], typer.Option(help="A split of data.splits (default: evaluate.split).")] = None,
    run_id: RunOpt = None,
    json_: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Score a model on held-out queries: nDCG@10, Recall@100, MRR@10 and more."""
    from vectune import pipeline

    s = _call(_load, spec)
    result = _call(pipeline.evaluate, s, model=model, split=split, run_id=run_id, verbose=verbose)
    if json_:
        console.emit_json(result)
        return
    role = "model" if model else "base"
    summary = result[role]
    console.out.print(console.metrics_table(
        f"{s.name}: {summary['split']} split, {summary['num_queries']} queries", {role: summary["metrics"]},
        s.evaluate.metrics))
    console.out.print(f"run {result['run_id']}: {result['run_dir']}/metrics.json", markup=False)


def _register_stage_commands() -> None:
    from vectune.commands import cluster, index, mine, train, tune

    for module in (mine, train, index, cluster, tune):
        module.register(app)


_register_stage_commands()


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
