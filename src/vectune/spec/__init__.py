"""The vectune spec: typed sections, strict YAML loading, JSON Schema."""

from vectune.spec.load import Problem, json_schema, load_spec, render, validate_dict
from vectune.spec.root import SPEC_VERSION, Spec

__all__ = ["SPEC_VERSION", "Problem", "Spec", "json_schema", "load_spec", "render", "validate_dict"]
