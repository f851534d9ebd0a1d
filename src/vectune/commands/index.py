"""`vectune` commands of the index stage: reindex, search, collections, rollback."""

from typing import Annotated, Optional

import typer

from vectune import _console as console
from vectune.commands._options import JsonOpt, RunOpt, SetOpt, SpecArg, VerboseOpt, WaitOpt, run


def _show_reindex(spec, result: dict) -> None:
    changes = {k: result[k] for k in ("added", "updated", "deleted", "unchanged")}
    console.out.print(console.kv_table(f"{spec.name}: alias {result['alias']} -> {result['name']}", {
        "mode": result["mode"] + (f" ({result['reason']})" if result.get("reason") else ""),
        "points": result["points"], **changes, "model": result["model"]["path"], "from": result["model_source"],
        "fingerprint": result["model"]["fingerprint"], "previous": result.get("previous") or "-",
        "deleted versions": ", ".join(result.get("deleted_collections") or []) or "-",
        "seconds": result.get("seconds", "-"),
    }))
    console.out.print(f"run {result['run_dir']}")


def _show_hits(spec, result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{result['alias']} -> {result['collection']}")
    for col, justify in (("#", "right"), ("doc id", "left"), ("score", "right"), ("title", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    for h in result["hits"]:
        table.add_row(str(h["rank"]), str(h["doc_id"]), f"{h['score']:.4f}", h["title"] or "")
    console.out.print(table)
    if result["model"]["forced"]:
        console.err.print("[yellow]warning:[/] queries embedded with a model other than the stamped one (--force)")


def _show_versions(spec, result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"alias {result['alias']} -> {result['live'] or '(none)'}")
    for col in ("collection", "live", "state", "points", "model", "created", "promoted"):
        table.add_column(col, overflow="fold")
    for v in result["collections"]:
        table.add_row(v["name"], "*" if v["live"] else "", v["state"], str(v["points"]),
                      v["model_fingerprint"] or "", (v["created"] or "")[:19], (v["promoted"] or "")[:19])
    console.out.print(table)


def _show_rollback(spec, result: dict) -> None:
    if result["changed"]:
        console.out.print(f"alias {result['alias']}: {result['previous']} -> [bold]{result['live']}[/]")
    else:
        console.out.print(f"alias {result['alias']} already serves {result['live']}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""

    @app.command()
    def reindex(
        spec: SpecArg,
        model: Annotated[Optional[str], typer.Option(
            "--model", "-m", help="Model folder or name to index with (default: the newest tuned model that passed the gate, "
                 "else the spec's base model).")] = None,
        full: Annotated[bool, typer.Option(
            "--full", help="Build a new collection and swap the alias (a point-in-time switch) even when the live "
                           "one could be synced in place.")] = False,
        run_id: RunOpt = None,
        wait: WaitOpt = 0.0,
        sets: SetOpt = None,
        json_: JsonOpt = False,
        verbose: VerboseOpt = False,
    ) -> None:
        """Sync the live collection with the corpus in place (only what changed), or, when the model or the
        vector settings changed (or with --full), embed the corpus into a new collection, verify it, then
        swap the alias to it."""
        from vectune import pipeline

        run(pipeline.reindex, spec, json_=json_, verbose=verbose, show=_show_reindex, sets=sets, model=model,
            run_id=run_id, wait=wait, full=full)

    @app.command()
    def search(
        spec: SpecArg,
        text: Annotated[str, typer.Argument(help="The query.", show_default=False)],
        top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=1000, help="Hits to show.")] = 10,
        model: Annotated[Optional[str], typer.Option(
            "--model", "-m", help="Embed the query with this model; refused unless it is the model stamped on the live "
                 "collection (same fingerprint). Default: the stamped model.")] = None,
        force: Annotated[bool, typer.Option("--force", help="Use --model even if it is not the stamped one.")] = False,
        sets: SetOpt = None,
        json_: JsonOpt = False,
        verbose: VerboseOpt = False,
    ) -> None:
        """Search the live collection with the model that built it."""
        from vectune.index import search as search_live

        run(lambda s, **kw: search_live(s, text, **kw), spec, json_=json_, verbose=verbose, show=_show_hits,
            sets=sets, k=top_k, model=model, force=force)

    @app.command()
    def collections(spec: SpecArg, sets: SetOpt = None, json_: JsonOpt = False, verbose: VerboseOpt = False) -> None:
        """List the versions of the spec's collection and which one the alias serves."""
        from vectune.index import list_collections

        run(list_collections, spec, json_=json_, verbose=verbose, show=_show_versions, sets=sets)

    @app.command()
    def rollback(
        spec: SpecArg,
        to: Annotated[Optional[str], typer.Option(
            help="Collection name or run id to serve (default: the previous one).")] = None,
        wait: WaitOpt = 0.0,
        sets: SetOpt = None,
        json_: JsonOpt = False,
        verbose: VerboseOpt = False,
    ) -> None:
        """Point the alias back at the previous verified collection, atomically."""
        from vectune import pipeline

        run(pipeline.rollback, spec, json_=json_, verbose=verbose, show=_show_rollback, sets=sets, to=to,
            wait=wait)
