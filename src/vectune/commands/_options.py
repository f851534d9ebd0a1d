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
                                               envvar="VECTUNE_RUN_ID", callback=lambda v: run_id_checked(v))]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs.")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY=VALUE", show_default=False,
    help="Override a spec field before validation, repeatable: --set train.epochs=3 --set "
         "mine.num_negatives=2. The value is read as YAML and checked like the file; the run's manifest "
         "records it and the spec hash covers it.")]
WaitOpt = Annotated[float, typer.Option("--wait", min=0, max=86400, help="Seconds to wait for another writer "
                                        "of the alias (a re-index, a rollback) to finish, instead of failing at once.")]


#: set by the app (vectune.cli) when the command line asks for --json: errors then also
#: print one JSON object on stdout, so a script always has something to parse
JSON_ERRORS = False


def fail(exc: BaseException) -> None:
    """Print `exc` for the user and exit with its code."""
    code = exc.exit_code if isinstance(exc, VectuneError) else EXIT_FAILURE
    console.print_error(exc)
    if JSON_ERRORS:
        console.emit_json(console.error_payload(exc, code))
    raise typer.Exit(code)


def run_id_checked(value: Optional[str]) -> Optional[str]:
    """--run-id / $VECTUNE_RUN_ID, checked before anything is read or written."""
    if value is not None:
        from vectune.runs import check_run_id

        call(check_run_id, value)
    return value


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
    except Exception as exc:  # noqa: BLE001 - one line for the user; the traceback with -v
        inner = cause(exc)
        if isinstance(inner, VectuneError):  # raised in a Ray worker, wrapped on the way back
            fail(inner)
        unexpected(exc)


def cause(exc: BaseException) -> BaseException:
    """The error under Ray's wrappers (RayTaskError and its kin keep it as `.cause`)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None)
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def unexpected(exc: BaseException) -> None:
    """An error vectune did not foresee: one line and exit 1; the traceback on stderr with -v
    (or VECTUNE_VERBOSE=1), so a bug report can carry it."""
    import logging
    import os

    if os.environ.get("VECTUNE_VERBOSE") == "1":
        logging.getLogger("vectune").exception("unexpected error")
    inner = cause(exc)

    class Unexpected(VectuneError):
        pass

    fail(Unexpected(f"unexpected {type(inner).__name__}: {str(inner).strip().splitlines()[0] if str(inner).strip() else ''}"
                    " (run again with -v for the traceback)"))


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
