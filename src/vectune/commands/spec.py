"""`vectune validate`, `render`, `schema`: inspect a spec without running anything."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
import yaml
from rich.markup import escape

from vectune import _console as console
from vectune.commands._options import JsonOpt, SetOpt, SpecArg, call, load


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""

    @app.command()
    def validate(
        spec: SpecArg,
        sets: SetOpt = None,
        no_data: Annotated[bool, typer.Option("--no-data", help="Check the spec alone, not its data files and model "
                                                                "(a spec written ahead of its data).")] = False,
        json_: JsonOpt = False,
    ) -> None:
        """Check a spec (every problem at once, with field paths and YAML lines), then that its
        data files and model exist and are readable (fast, without Ray)."""
        from vectune import pipeline

        s = load(spec, sets)
        result = {"spec": str(spec), **call(pipeline.validate, s, data=not no_data)}
        if json_:
            console.emit_json(result)
            return
        checked = "" if no_data else f"; {len(result['files'])} data file(s) and the model found"
        here = ", ".join(f"{f} {v}" for f, v in result["precision"].items())
        console.out.print(f"[green]valid[/] {escape(str(spec))} (name {s.name}, hash {s.digest()}{escape(checked)}; "
                          f"on this machine: {escape(here)})")

    @app.command()
    def render(spec: SpecArg, sets: SetOpt = None, json_: JsonOpt = False) -> None:
        """Print the spec with every default filled in and every path resolved."""
        from vectune._redact import redact_tree
        from vectune.spec import render as render_spec

        s = load(spec, sets)
        rendered = redact_tree(render_spec(s))  # a URL's credentials stay off the terminal
        if json_:
            console.emit_json(rendered)
        else:
            sys.stdout.write(_annotated(yaml.safe_dump(rendered, sort_keys=False), s))

    @app.command()
    def schema() -> None:
        """Print the spec's JSON Schema (for editor completion and validation)."""
        from vectune.spec import json_schema

        console.emit_json(json_schema())


def _annotated(text: str, spec) -> str:
    """The rendered YAML with what each precision field becomes on this machine beside it
    (`# here: fp32 (auto: no native bf16 on this CPU (AVX2))`): `auto` is only decided where a
    stage runs, so the comment says what it would be if the stages ran here."""
    from vectune.precision import local_choices

    choices = local_choices(spec)
    out, section = [], None
    for line in text.splitlines():
        if line and not line[0].isspace():
            section = line.split(":", 1)[0]
        choice = choices.get(f"{section}.precision")
        if choice is not None and line.startswith("  precision:"):
            note = choice.warning() or choice.reason
            line = f"{line}  # here: {choice.resolved} ({note})"
        out.append(line)
    return "\n".join(out) + "\n"
