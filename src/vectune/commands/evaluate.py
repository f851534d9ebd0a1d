"""`vectune evaluate`: score a model on held-out queries."""

from typing import Annotated, Optional

import typer

from vectune import _console as console
from vectune.commands._options import JsonOpt, RunOpt, SetOpt, SpecArg, VerboseOpt, run


def _show(spec, result: dict) -> None:
    role = next(r for r in ("live", "model", "base") if r in result)
    summary = result[role]
    rows = {role: summary["metrics"]}
    if "bm25" in result:
        rows["bm25"] = result["bm25"]["metrics"]
    console.out.print(console.metrics_table(
        f"{spec.name}: {summary['split']} split, {summary['num_queries']} queries", rows, spec.evaluate.metrics))
    show_over_bm25(result.get("over_bm25"), spec.evaluate.metrics)
    console.out.print(f"run {result['run_id']}: {result['run_dir']}/metrics.json", markup=False)


def show_over_bm25(gains: dict | None, metrics: list[str]) -> None:
    """One line per model: its gain over BM25 on each metric (`vectune evaluate` and `vectune run`)."""
    for role, by_metric in (gains or {}).items():
        console.out.print(f"{role} over BM25: " + ", ".join(f"{m} {by_metric[m]:+.4f}" for m in metrics
                                                           if m in by_metric), markup=False)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""

    @app.command()
    def evaluate(
        spec: SpecArg,
        model: Annotated[Optional[str], typer.Option("--model", "-m", help="A model folder or name instead of the spec's base model.")] = None,
        split: Annotated[Optional[str], typer.Option(help="A split of data.splits (default: evaluate.split).")] = None,
        live: Annotated[bool, typer.Option("--live", help="Score the collection behind the alias as it is served "
                                                          "(its stamped model and mode), through Qdrant's Query API.")] = False,
        run_id: RunOpt = None,
        sets: SetOpt = None,
        json_: JsonOpt = False,
        verbose: VerboseOpt = False,
    ) -> None:
        """Score a model on held-out queries: nDCG@10, Recall@100, MRR@10 and more; --live: what is served."""
        from vectune import pipeline

        run(pipeline.evaluate, spec, json_=json_, verbose=verbose, show=_show, sets=sets, model=model,
            split=split, run_id=run_id, live=live)
