"""Ray job entrypoint: re-embed the corpus with the live (or a given) model and swap the
Qdrant alias to the new collection.

    python pipelines/reindex.py --spec spec.yaml [--model PATH] [--run-id ID]
"""

from _common import main


def _run(spec, args):
    from vectune import pipeline

    return pipeline.reindex(spec, model=args.model, run_id=args.run_id)


if __name__ == "__main__":
    main(__doc__, _run, model=True)
