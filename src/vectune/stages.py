"""The names a user picks from: the whole loop's stages and the Ray job pipelines.

One home for both lists, light enough for the CLI to import before anything heavy, so
`--from`, `--only` and `--pipeline` list their choices in `--help` and refuse others
while parsing. `vectune.pipeline` and `vectune.jobs` read the same names from here.
"""

from __future__ import annotations

from enum import Enum


class Stage(str, Enum):
    """A stage of `vectune run`, in the order it runs."""

    mine = "mine"
    train = "train"
    evaluate = "evaluate"
    gate = "gate"
    reindex = "reindex"


class Pipeline(str, Enum):
    """A Ray job entrypoint in `pipelines/` (`vectune submit --pipeline`)."""

    finetune = "finetune"
    reindex = "reindex"
    evaluate = "evaluate"


STAGES = tuple(s.value for s in Stage)
PIPELINES = tuple(p.value for p in Pipeline)
