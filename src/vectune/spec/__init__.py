"""The vectune spec: typed sections, strict YAML loading, JSON Schema."""

from vectune.spec.load import (SPEC_ENV, Problem, json_schema, load_spec, load_spec_from, parse_overrides, render,
                               validate_dict)
from vectune.spec.root import SPEC_VERSION, Spec

__all__ = ["SPEC_ENV", "SPEC_VERSION", "Problem", "Spec", "json_schema", "load_spec", "load_spec_from", "parse_overrides",
           "render", "validate_dict"]
