"""`vectune runs`: the runs of a spec side by side."""

from __future__ import annotations

import typer
from rich.table import Table

from vectune import _console as console
from vectune.commands._options import JsonOpt, SpecArg, VerboseOpt, run


def _fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _show(spec, result: dict) -> None:
    metric = spec.evaluate.gate.metric
    table = Table(title=f"{spec.name}: runs (live: {result['live'] or 'none'})")
    for column in ("run", "started", "stages", "precision", metric, "gate", "against", "gain [95% CI]", "p",
                   "collection"):
        table.add_column(column)
    for row in result["runs"]:
        gate = row["gate"] or {}
        verdict = "-" if not gate else ("passed" if gate["passed"] else "refused")
        ci = gate.get("ci95")
        gain = _fmt(gate.get("gain"), "+.4f") + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")
        stages = ",".join(row["stages"]) + (f" (failed: {','.join(row['failed'])})" if row["failed"] else "")
        precision = row.get("precision") or {}
        shown = "/".join(precision.get(f) or "-" for f in ("train.precision", "model.precision")) if precision else "-"
        table.add_row(row["run_id"], row["started"] or "-", stages, shown, _fmt(row["metrics"].get(metric)), verdict,
                      gate.get("against") or "-", gain, _fmt(gate.get("p_value")),
                      (row["collection"] or "-") + (" (live)" if row["live"] else ""))
    console.out.print(table)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""

    @app.command(name="runs")
    def runs_(spec: SpecArg, json_: JsonOpt = False, verbose: VerboseOpt = False) -> None:
        """List the runs of a spec: stages done, metrics, the gate's decision and against what, the live one."""
        from vectune import pipeline

        run(pipeline.runs, spec, json_=json_, verbose=verbose, show=_show)
