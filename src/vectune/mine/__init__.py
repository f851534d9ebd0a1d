"""Mine stage: hard negatives for the training pairs, with false-negative guards.

`mine(spec, data, run)` is the stage (Ray running, inside the run); `vectune mine`
reaches it through `vectune.pipeline.mine`.
"""

from vectune.mine.audit import preflight
from vectune.mine.select import normalise
from vectune.mine.stage import AUDIT, SCHEMA, TRIPLES, mine, stage_inputs, training_labels

__all__ = ["AUDIT", "SCHEMA", "TRIPLES", "mine", "normalise", "preflight", "stage_inputs", "training_labels"]
