"""`vectune model export`: build a model's int8 variant ahead of time (images, services)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from vectune.commands._options import JsonOpt, VerboseOpt, call

model_app = typer.Typer(name="model", help="Prepare a model for encoding: its int8 variant.", no_args_is_help=True)


class ExportPrecision(str, Enum):
    int8 = "int8"


def _show(result: dict) -> None:
    from vectune import _console as console

    quality = result.get("quality") or {}
    check = (result.get("checks") or [{}])[-1]
    items = {"model": result["model"], "fingerprint": result["fingerprint"], "precision": result["precision"],
             "variant": result["path"],
             "built": f"now, in {result['seconds']:.1f} s" if result["built"]
             else f"already there (built in {result.get('build_seconds')} s); found in {result['seconds']:.1f} s"}
    if result.get("step_seconds"):
        items["build steps (s)"] = ", ".join(f"{k} {v}" for k, v in result["step_seconds"].items())
    if quality:
        items["cosine to fp32"] = (f"{quality['cosine_mean']:.4f} mean, {quality['cosine_min']:.4f} min "
                                   f"({quality['texts']} texts)")
    if check:
        items["nDCG@10 fp32 / int8"] = (f"{check['ndcg_fp32']:.4f} / {check['ndcg_int8']:.4f} on {check['queries']} "
                                        f"{check['sample']}")
    console.out.print(console.kv_table("int8 variant", items))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.add_typer(model_app)


@model_app.command("export")
def export(
    model: Annotated[str, typer.Argument(help="A model folder, a registry name (all-MiniLM-L6-v2) or a cached hub id.",
                                         show_default=False)],
    precision: Annotated[ExportPrecision, typer.Option("--precision", help="The variant to build.")] = ExportPrecision.int8,
    json_: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Build the model's int8 variant where every later run finds it (beside a writable model, else in
    $XDG_CACHE_HOME/vectune/int8), measure it against fp32, and print where it went and how long it took.
    Does nothing but report when the variant is already there."""
    from vectune import _console as console
    from vectune.embed.models import export_int8

    result = call(export_int8, model, verbose=verbose)
    if json_:
        console.emit_json(result)
    else:
        _show(result)
