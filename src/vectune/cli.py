"""The `vectune` command: the typer app, built from the command modules in `vectune.commands`.

Commands parse and delegate (to `vectune.pipeline` and the stage packages); the shared
option types and the error contract live in `vectune.commands._options`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from vectune.commands import evaluate, index, jobs, mine, spec, train, tune

app = typer.Typer(
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

for _module in (spec, evaluate, mine, train, index, jobs, tune):
    _module.register(app)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
