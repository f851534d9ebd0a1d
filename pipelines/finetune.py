"""Ray job entrypoint: the whole pipeline for a spec (mine, train, evaluate, gate, re-index).

    python pipelines/finetune.py --spec spec.yaml [--run-id ID] [--from-stage STAGE]
"""

from _common import main


def _run(spec, args):
    from vectune import pipeline

    return pipeline.run(spec, run_id=args.run_id, from_stage=args.from_stage)


def _options(p):
    p.add_argument("--from-stage", help="Resume the run from this stage (re-running it and the ones after).")


if __name__ == "__main__":
    main(__doc__, _run, extra=_options)
