"""`vectune mine`: mine hard negatives and print the audit."""

from typing import Annotated

import typer

from vectune.commands._options import JsonOpt, RunOpt, SetOpt, SpecArg, VerboseOpt, run


def summary_tables(result: dict) -> list:
    """Rich tables of a mine audit: counts, guard drops, score distributions."""
    from rich.table import Table

    from vectune import _console as console

    counts = {
        "queries in / mined": f"{result['queries_in']} / {result['queries_mined']}",
        "pairs in / mined": f"{result['pairs_in']} / {result['pairs_mined']}",
        "triples out (rows)": result["triples_out"],
        "negatives out": result["negatives_out"],
        "queries short of negatives": result["queries_short"],
        "queries without negatives": result["queries_without_negatives"],
        "rows without negatives (trained on in-batch negatives)": result.get("rows_without_negatives", 0),
        "guards judged per": result.get("judged_per", "query"),
        "candidates considered": result["candidates"],
        "candidates ranked by": _ranked_by(result.get("ranking")),
        "score source": result["score_source"],
    }
    if result["shown"]["candidates"]:
        counts["shown (click logs): candidates / taken"] = (
            f"{result['shown']['candidates']} / {result['shown']['negatives']}")
    cache = result["embedding_cache"]
    if cache["enabled"]:
        counts["documents / queries encoded"] = f"{cache['documents_encoded']} / {cache['queries_encoded']}"
    counts["seconds"] = f"{result['seconds']['total']:.1f}"
    if result.get("grades", {}).get("mined"):
        counts["grades mined (grade: rows)"] = ", ".join(f"{g}: {n}" for g, n in result["grades"]["mined"].items())
    emptied = result.get("emptied_by", {}).get("queries", {})
    dropped = Table(title="candidates dropped")
    dropped.add_column("guard")
    dropped.add_column("dropped", justify="right")
    dropped.add_column("queries left without negatives", justify="right")
    for name, n in result["dropped"].items():
        dropped.add_row(name.replace("_", " "), str(n), str(emptied.get(name, 0)))
    scores = Table(title=f"scores ({result['score_source']})")
    scores.add_column("")
    names = ("positive", "negative", "difference")
    for name in names:
        scores.add_column(name, justify="right")
    for stat in ("count", "mean", "std", "min", "p5", "p25", "p50", "p75", "p95", "max"):
        values = [result["scores"][name][stat] for name in names]
        scores.add_row(stat, *("-" if v is None else (str(v) if stat == "count" else f"{v:.4f}") for v in values))
    return [console.kv_table(f"mine: run {result['run_id']}", counts), dropped, scores]


def _show(spec, result: dict) -> None:
    from vectune import _console as console

    for table in summary_tables(result):
        console.out.print(table)
    console.out.print(f"run {result['run_id']}: {result['triples']}", markup=False)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""

    @app.command()
    def mine(
        spec: SpecArg,
        run_id: RunOpt = None,
        force: Annotated[bool, typer.Option("--force", help="Mine again even if this run already has it.")] = False,
        sets: SetOpt = None,
        json_: JsonOpt = False,
        verbose: VerboseOpt = False,
    ) -> None:
        """Mine hard negatives for the training pairs; writes mine/triples.parquet and mine_audit.json."""
        from vectune import pipeline

        run(pipeline.mine, spec, json_=json_, verbose=verbose, show=_show, sets=sets, run_id=run_id,
            force=force)


def _ranked_by(ranking: dict | None) -> str:
    if not ranking or ranking["source"] == "dense":
        return "the base model (dense)"
    return (f"the base model and BM25, {ranking['fusion']} of each side's top {ranking['prefetch']} "
            f"({ranking['from_bm25_only']} candidates only BM25 found)")
