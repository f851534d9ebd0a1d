"""The tune search space and the specs it derives (pure: no Ray Tune run)."""

from __future__ import annotations

import yaml

from vectune.spec import load_spec, validate_dict
from vectune.tune.space import apply, renamed, search_space, write_tuned_spec

SPEC = {"version": 1, "name": "t", "data": {"corpus": {"path": "c.jsonl"}},
        "train": {"learning_rate": 5e-5, "epochs": 2},
        "tune": {"space": {"train.learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-4},
                           "train.epochs": {"type": "choice", "values": [1, 2]}}}}


def test_apply_sets_dotted_values_validated_and_keeps_the_source(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    spec = load_spec(path)
    out = apply(spec, {"train.learning_rate": 3e-5, "train.epochs": 1})
    assert out.train.learning_rate == 3e-5 and out.train.epochs == 1 and out.source == spec.source
    assert spec.train.learning_rate == 5e-5  # the original is untouched
    assert renamed(spec, "t-tune").name == "t-tune" and renamed(spec, "t-tune").source == spec.source


def test_search_space_names_every_parameter():
    space = search_space(validate_dict(SPEC, "t"))
    assert set(space) == {"train.learning_rate", "train.epochs"}


def test_tuned_spec_is_written_beside_the_original_and_loads(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    target = write_tuned_spec(load_spec(path), {"train.learning_rate": 4e-5}, "written by a test")
    assert target == tmp_path / "s.tuned.yaml"
    tuned = load_spec(target)
    assert tuned.train.learning_rate == 4e-5 and tuned.train.epochs == 2 and not tuned.tune.space
