"""Evaluate stage: held-out retrieval metrics, BM25 beside them, and the promotion gate."""

from vectune.evaluate.bm25 import gains_over
from vectune.evaluate.metrics import score_run
from vectune.evaluate.stage import Evaluation, evaluate_model, rank_modes

__all__ = ["Evaluation", "evaluate_model", "gains_over", "rank_modes", "score_run"]
