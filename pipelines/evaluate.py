"""Ray job entrypoint: score a model (the spec's base model by default) on a held-out split.

    python pipelines/evaluate.py --spec spec.yaml [--model PATH] [--split NAME] [--run-id ID]
"""

from _common import main


def _run(spec, args):
    from vectune import pipeline

    return pipeline.evaluate(spec, model=args.model, split=args.split, run_id=args.run_id)


def _options(p):
    p.add_argument("--split", help="A split of data.splits (default: evaluate.split).")


if __name__ == "__main__":
    main(__doc__, _run, model=True, extra=_options)
