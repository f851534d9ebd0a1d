"""Every file in specs/ is a valid spec (loader and JSON Schema agree)."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from vectune.spec import json_schema, load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"
FILES = sorted(p for p in SPECS.rglob("*") if p.is_file())


def test_specs_dir_is_not_empty():
    assert FILES, f"no specs under {SPECS}"


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(SPECS)) for p in FILES])
def test_spec_file_is_valid(path):
    assert path.suffix in (".yaml", ".yml"), "specs/ holds YAML specs only"
    spec = load_spec(path)  # raises SpecError listing every problem
    assert spec.version == 1
    jsonschema.validate(yaml.safe_load(path.read_text()), json_schema(), cls=jsonschema.Draft202012Validator)
