"""`vectune validate`, `render`, `schema`: inspect a spec without running anything."""

from __future__ import annotations

import sys

import typer
import yaml
from rich.markup import escape

from vectune import _console as console
from vectune.commands._options import JsonOpt, SetOpt, SpecArg, load


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""

    @app.command()
    def validate(spec: SpecArg, sets: SetOpt = None, json_: JsonOpt = False) -> None:
        """Check a spec: every problem at once, with field paths and YAML lines."""
        s = load(spec, sets)
        if json_:
            console.emit_json({"valid": True, "spec": str(spec), "name": s.name, "hash": s.digest()})
        else:
            console.out.print(f"[green]valid[/] {escape(str(spec))} (name {s.name}, hash {s.digest()})")

    @app.command()
    def render(spec: SpecArg, sets: SetOpt = None, json_: JsonOpt = False) -> None:
        """Print the spec with every default filled in and every path resolved."""
        from vectune.spec import render as render_spec

        rendered = render_spec(load(spec, sets))
        if json_:
            console.emit_json(rendered)
        else:
            sys.stdout.write(yaml.safe_dump(rendered, sort_keys=False))

    @app.command()
    def schema() -> None:
        """Print the spec's JSON Schema (for editor completion and validation)."""
        from vectune.spec import json_schema

        console.emit_json(json_schema())
