"""Mine stage: hard negatives for the training pairs, with false-negative guards.

`mine(spec, data, run)` is the stage (Ray running, inside the run); `mine_spec(spec)`
is what `vectune mine` calls (checks the labels, opens the run, starts Ray).
"""

from vectune.mine.audit import preflight
from vectune.mine.select import normalise
from vectune.mine.stage import AUDIT, SCHEMA, TRIPLES, mine, mine_spec, stage_inputs, training_labels

__all__ = ["AUDIT", "SCHEMA", "TRIPLES", "mine", "mine_spec", "normalise", "preflight", "stage_inputs", "training_labels"]
