"""Tune stage: hyperparameter search over train and mine settings with Ray Tune."""

from vectune.tune.space import apply, search_space, write_tuned_spec
from vectune.tune.tuner import search

__all__ = ["apply", "search", "search_space", "write_tuned_spec"]
