"""Ray job entrypoint: bring the live Qdrant collection in step with the corpus: synced in
place when the promoted (or a given) model and the vector settings match its stamp, else
(or with --full) re-embedded into a new collection and the alias swapped to it.

    python pipelines/reindex.py --spec spec.yaml [--model PATH] [--run-id ID] [--full]
"""

from _common import main


def _run(spec, args):
    from vectune import pipeline

    return pipeline.reindex(spec, model=args.model, run_id=args.run_id, full=args.full)


def _options(p) -> None:
    p.add_argument("--full", action="store_true", help="Build a new collection even if the live one can be synced.")


if __name__ == "__main__":
    main(__doc__, _run, model=True, extra=_options)
