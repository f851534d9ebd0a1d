"""Evaluate stage: held-out retrieval metrics and the promotion gate."""

from vectune.evaluate.metrics import score_run
from vectune.evaluate.stage import Evaluation, evaluate_model, retrieve

__all__ = ["Evaluation", "evaluate_model", "retrieve", "score_run"]
