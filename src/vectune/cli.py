"""The `vectune` command: the typer app, built from the command modules in `vectune.commands`.

Commands parse and delegate (to `vectune.pipeline` and the stage packages); the shared
option types and the error contract live in `vectune.commands._options`.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from vectune.commands import _options, evaluate, index, jobs, mine, model, runs, spec, train, tune


class _Group(TyperGroup):
    """vectune's error contract for what click itself refuses too (an unknown option, a
    value of the wrong type, a missing argument): the message, exit code 2, and with
    --json one JSON object on stdout, as for vectune's own errors."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        _options.JSON_ERRORS = "--json" in argv
        try:
            code = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            print("interrupted", file=sys.stderr)
            code = 130
        except typer.Exit as exc:  # raised outside a command's own handling
            code = exc.exit_code
        except typer.TyperException as exc:  # click's usage errors (typer vendors click)
            exc.show()
            if _options.JSON_ERRORS:
                from vectune import _console as console

                console.emit_json({"error": exc.format_message(), "kind": "UsageError", "exit_code": exc.exit_code,
                                   "usage": exc.ctx.get_usage() if getattr(exc, "ctx", None) else None})
            code = exc.exit_code
        except Exception as exc:  # noqa: BLE001 - the last net: never a traceback
            try:
                _options.unexpected(exc)
            except typer.Exit as done:
                code = done.exit_code
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=_Group,
    name="vectune",
    help="Adapt an embedding model to your domain on Ray, and re-index Qdrant without downtime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"vectune {version('vectune')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True,
                                          help="Print vectune's version and exit.")] = False,
) -> None:
    pass  # the options above act through their callbacks

for _module in (spec, evaluate, mine, train, index, runs, jobs, tune, model):
    _module.register(app)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
