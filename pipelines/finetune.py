"""Ray job entrypoint: the whole pipeline for a spec (mine, train, evaluate, gate, re-index).

    python pipelines/finetune.py --spec spec.yaml [--run-id ID] [--from STAGE | --only STAGE] [--set KEY=VALUE]

The options are spelled as `vectune run`'s.
"""

from _common import main


def _run(spec, args):
    from vectune import pipeline

    return pipeline.run(spec, run_id=args.run_id, from_stage=args.from_stage, only=args.only)


def _options(p):
    from vectune.stages import STAGES

    p.add_argument("--from", dest="from_stage", choices=STAGES,
                   help="Re-run from this stage on (re-running it and the ones after).")
    p.add_argument("--only", choices=STAGES, help="Run only this stage.")


if __name__ == "__main__":
    main(__doc__, _run, extra=_options)
