"""What every command shares: the option types, the error contract, the load-call-print skeleton.

Commands parse options and delegate; the library does the work. A library call's
VectuneError becomes its message on stderr and its exit code (2 bad input, 3 gate
refused, 1 otherwise), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from vectune import _console as console
from vectune.errors import EXIT_FAILURE, VectuneError

SpecArg = Annotated[Path, typer.Argument(help="The YAML spec.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout; logs go to stderr.")]
RunOpt = Annotated[Optional[str], typer.Option("--run-id", help="Reuse (resume) this run instead of a new one.",
                                               envvar="VECTUNE_RUN_ID")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs.")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY=VALUE", show_default=False,
    help="Override a spec field before validation, repeatable: --set train.epochs=3 --set "
         "mine.num_negatives=2. The value is read as YAML and checked like the file; the run's manifest "
         "records it and the spec hash covers it.")]


def fail(exc: BaseException) -> None:
    """Print `exc` for the user and exit with its code."""
    console.print_error(exc)
    raise typer.Exit(exc.exit_code if isinstance(exc, VectuneError) else EXIT_FAILURE)


def call(fn: Callable, *args, verbose: bool = False, **kwargs):
    """Run a library call with vectune's error contract: message on stderr, exit code, no traceback."""
    console.setup_logging(verbose)
    try:
        return fn(*args, **kwargs)
    except VectuneError as exc:
        fail(exc)
    except KeyboardInterrupt:
        console.err.print("interrupted")
        raise typer.Exit(130) from None


def load(spec: Path, sets: list[str] | None = None):
    """The validated spec, with `--set` overrides (a SpecError exits 2 with every problem listed)."""
    from vectune.spec import load_spec, parse_overrides

    return call(lambda: load_spec(spec, parse_overrides(sets)))


def run(fn: Callable, spec: Path, *, json_: bool, verbose: bool, show: Callable[[Any, dict], None],
        sets: list[str] | None = None, **kwargs) -> dict:
    """Load the spec (with `--set` overrides), call `fn(spec, **kwargs)`, then print its result:
    JSON, or `show(spec, result)`."""
    s = load(spec, sets)
    result = call(fn, s, verbose=verbose, **kwargs)
    if json_:
        console.emit_json(result)
    else:
        show(s, result)
    return result
