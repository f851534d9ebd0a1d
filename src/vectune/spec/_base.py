"""Shared base for spec sections: strict, validated after defaults, typed.

Numbers are checked where they enter, for every section at once: finite (no `.inf`,
`.nan`), never a YAML boolean where a number is meant (pydantic would read `true` as 1),
and each numeric field declares its own upper bound (tests/unit/test_spec.py holds every
field to that).
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError


def _numeric_without_bool(annotation: Any) -> bool:
    """Whether a field's type takes numbers but not booleans (int, float, their unions and lists)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _numeric_without_bool(args[0])
    if origin in (typing.Union, types.UnionType):
        if bool in args:
            return False
        return any(_numeric_without_bool(a) for a in args)
    if origin in (list, tuple, set):
        return bool(args) and _numeric_without_bool(args[0])
    return annotation in (int, float)


class Section(BaseModel):
    """A spec section: unknown keys are errors, defaults are validated too."""

    model_config = ConfigDict(
        extra="forbid",
        validate_default=True,
        validate_assignment=True,
        frozen=False,
        populate_by_name=False,
        allow_inf_nan=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        problems = []
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if field is None or not _numeric_without_bool(field.annotation):
                continue
            items = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, bool) for v in items):
                problems.append(InitErrorDetails(
                    type=PydanticCustomError("bool_for_number", "expected a number, not a boolean ({value})",
                                             {"value": str(value).lower()}),
                    loc=(name,), input=value))
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return data
