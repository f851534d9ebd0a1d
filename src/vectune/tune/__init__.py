"""Tune stage: hyperparameter search over train and mine settings with Ray Tune."""

from vectune.tune.search import tune_spec
from vectune.tune.space import apply, search_space, write_tuned_spec

__all__ = ["apply", "search_space", "tune_spec", "write_tuned_spec"]
