"""`vectune tune` (hyperparameter search) and `vectune report` (a run's HTML report)."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from vectune import _console as console
from vectune.commands._options import JsonOpt, RunOpt, SetOpt, SpecArg, VerboseOpt, call, run


def _trials_table(result: dict):
    from rich.table import Table

    metric = result["metric"]
    names = sorted({k for tr in result["trials"] for k in tr["config"]})
    table = Table(title=f"{len(result['trials'])} trials, scored by {metric} on "
                        f"{result['validation_queries']} held-out training queries")
    for col in ("trial", *names, metric, "final loss", "seconds", "status"):
        table.add_column(col, justify="left" if col in ("trial", "status") else "right")
    best = result["best"]["trial_id"]
    for tr in sorted(result["trials"], key=lambda tr: -(tr["metrics"].get(metric) or -1)):
        values = [f"{tr['config'][n]:.3g}" if isinstance(tr["config"].get(n), float) else str(tr["config"].get(n))
                  for n in names]
        score = tr["metrics"].get(metric)
        label = tr["trial_id"] + (" *" if tr["trial_id"] == best else "") + (" (spec)" if tr.get("baseline") else "")
        table.add_row(label, *values,
                      f"{score:.4f}" if score is not None else "-",
                      f"{tr['final_loss']:.4f}" if tr.get("final_loss") is not None else "-",
                      f"{tr['seconds']:.0f}" if tr.get("seconds") is not None else "-",
                      tr["status"] if tr["status"] == "done" else f"failed: {tr['error']}")
    return table


def _show(spec, result: dict) -> None:
    console.out.print(_trials_table(result))
    console.out.print(f"best: {result['best']['config']} -> {result['tuned_spec']}", markup=False)
    if result.get("gain_vs_baseline") is not None:
        console.out.print(f"{result['metric']} gain over the spec's own values: "
                          f"{result['gain_vs_baseline']:+.4f}", markup=False)
    console.out.print(f"run {result['run_id']}: {result['run_dir']}", markup=False)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""

    @app.command()
    def tune(spec: SpecArg, run_id: RunOpt = None, sets: SetOpt = None, json_: JsonOpt = False,
             verbose: VerboseOpt = False) -> None:
        """Search train/mine settings (the spec's `tune` section) with Ray Tune on held-out
        training queries; writes the best as `<spec>.tuned.yaml`."""
        from vectune import pipeline

        run(pipeline.tune, spec, json_=json_, verbose=verbose, show=_show, sets=sets, run_id=run_id)

    @app.command()
    def report(
        run_dir: Annotated[Path, typer.Argument(help="A run folder (holds manifest.json).", show_default=False)],
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write (default RUN_DIR/report.html).")] = None,
        json_: JsonOpt = False,
    ) -> None:
        """Write a run's self-contained HTML report: metrics, plots, timings, lineage."""
        from vectune.report import write_report

        path = call(write_report, run_dir, out)
        if json_:
            console.emit_json({"report": str(path), "bytes": path.stat().st_size})
        else:
            console.out.print(f"[green]report[/] {escape(str(path))}")
