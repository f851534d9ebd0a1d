"""`vectune train` and `vectune run`: fine-tune, and the whole loop."""


from typing import Annotated, Optional

import typer

from rich.markup import escape

from vectune import _console as console
from vectune.commands._options import JsonOpt, RunOpt, SetOpt, SpecArg, VerboseOpt, WaitOpt, run
from vectune.commands.evaluate import show_over_bm25
from vectune.stages import Stage


def _show_train(spec, result: dict) -> None:
    console.out.print(console.kv_table(f"{spec.name}: train (run {result['run_id']})", result["train"]))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""

    @app.command()
    def train(spec: SpecArg, run_id: RunOpt = None, sets: SetOpt = None, json_: JsonOpt = False,
              verbose: VerboseOpt = False) -> None:
        """Fine-tune the base model on a run's mined triples with Ray Train."""
        from vectune import pipeline

        run(pipeline.train, spec, json_=json_, verbose=verbose, show=_show_train, sets=sets, run_id=run_id)

    @app.command(name="run")
    def run_(
        spec: SpecArg,
        run_id: RunOpt = None,
        from_: Annotated[Optional[Stage], typer.Option("--from", help="Re-run from this stage on.")] = None,
        only: Annotated[Optional[Stage], typer.Option("--only", help="Run only this stage.")] = None,
        sets: SetOpt = None,
        wait: WaitOpt = 0.0,
        json_: JsonOpt = False,
        verbose: VerboseOpt = False,
    ) -> None:
        """The whole loop: validate, mine, train, evaluate, gate, re-index."""
        from vectune import pipeline

        run(pipeline.run, spec, json_=json_, verbose=verbose, show=_print_run, sets=sets, run_id=run_id,
            from_stage=from_.value if from_ else None, only=only.value if only else None, wait=wait)


def _print_run(spec, result: dict) -> None:
    evals = result.get("evaluate")
    if evals:
        rows = {role: evals[role]["metrics"] for role in ("base", "champion", "tuned", "bm25") if role in evals}
        console.out.print(console.metrics_table(f"{spec.name}: {spec.evaluate.split} split", rows,
                                                spec.evaluate.metrics))
        show_over_bm25(evals.get("over_bm25"), spec.evaluate.metrics)
    gate = result.get("gate")
    if gate:
        verdict = "[green]passed[/]" if gate["passed"] else "[red]failed[/]"
        console.out.print(f"gate {verdict}: ", escape(gate.get("summary") or ""), sep="")
        for reason in gate.get("reasons", []):
            console.out.print(f"  - {escape(reason)}")
    if result.get("reindex"):
        console.out.print(f"live collection: {result['reindex'].get('collection') or result['reindex'].get('name')}")
    console.out.print(f"run {result['run_id']}: {result['run_dir']}")
