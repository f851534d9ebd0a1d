"""Load a YAML spec: every error at once, each with its field path and YAML line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vectune.errors import SpecError
from vectune.spec.root import Spec


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '<spec>'}: {self.message}"


class _Lines:
    """Maps a field path to the YAML line it was written on."""

    def __init__(self, node: yaml.Node | None):
        self.node = node

    def line(self, loc: tuple[Any, ...]) -> int | None:
        node = self.node
        best = node.start_mark.line + 1 if node is not None else None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                nxt = None
                for key, value in node.value:
                    if key.value == str(part):
                        best = key.start_mark.line + 1
                        nxt = value
                        break
                if nxt is None:
                    return best
                node = nxt
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                best = node.start_mark.line + 1
            else:
                return best
        return best


def _loc_str(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # Discriminated unions add the tag ("mnrl") and validators add "function-after[...]"
    # to the location; neither is a key the user wrote.
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in _TAGS)))


_TAGS = {"mnrl", "cached_mnrl", "triplet", "choice", "uniform", "loguniform"}


def parse_yaml(text: str, source: str) -> tuple[Any, _Lines]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else None
        raise SpecError(source, [Problem("", f"invalid YAML: {exc.problem}", line)]) from None
    except yaml.YAMLError as exc:
        raise SpecError(source, [Problem("", f"invalid YAML: {exc}")]) from None
    return data, _Lines(node)


def _cross_checks(spec: Spec) -> list[tuple[tuple[Any, ...], str]]:
    """Rules that span sections (checked after every default is applied)."""
    out: list[tuple[tuple[Any, ...], str]] = []
    splits = spec.data.splits
    if splits and spec.evaluate.split not in splits:
        out.append((("evaluate", "split"), f"{spec.evaluate.split!r} is not a key of data.splits {sorted(splits)}"))
    gate = spec.evaluate.gate
    for metric in [gate.metric, *gate.no_regress]:
        if metric not in spec.evaluate.metrics:
            out.append((("evaluate", "gate"), f"gate metric {metric!r} is not in evaluate.metrics"))
    if spec.train.negatives is not None and spec.train.negatives > spec.mine.num_negatives:
        out.append((("train", "negatives"), f"{spec.train.negatives} exceeds mine.num_negatives ({spec.mine.num_negatives})"))
    if spec.mine.cross_encoder and not Path(spec.resolve(spec.mine.cross_encoder, data=False)).exists():
        out.append((("mine", "cross_encoder"), f"no such folder: {spec.mine.cross_encoder}"))
    return out


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> Spec:
    """Read, validate and return a spec; raise SpecError listing every problem.

    Args:
        path: the YAML file.
        overrides: dotted keys to set before validation (`{"train.epochs": 2}`).
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(str(path), [Problem("", "spec file not found")])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(str(path), [Problem("", f"not UTF-8 text (byte {exc.start})")]) from None
    data, lines = parse_yaml(text, str(path))
    if not isinstance(data, dict):
        raise SpecError(str(path), [Problem("", "the spec must be a YAML mapping of sections", 1)])
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    return validate_dict(data, str(path), lines, source=path)


def validate_dict(data: dict, name: str, lines: _Lines | None = None, source: Path | None = None) -> Spec:
    """Validate an already-parsed spec mapping."""
    lines = lines or _Lines(None)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = _clean_loc(tuple(err["loc"]))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (not part of this section)"
            elif err["type"] == "missing":
                msg = "required field is missing"
            problems.append(Problem(_loc_str(loc), msg, lines.line(loc)))
        raise SpecError(name, problems) from None
    spec._source = source.resolve() if source else None
    cross = _cross_checks(spec)
    if cross:
        raise SpecError(name, [Problem(_loc_str(loc), msg, lines.line(loc)) for loc, msg in cross])
    return spec


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError("<override>", [Problem(key, "cannot set a key inside a non-mapping value")])
    node[parts[-1]] = value


def render(spec: Spec) -> dict:
    """The spec with every default filled in and every data path resolved."""
    out = spec.canonical()
    data = out["data"]
    data["root"] = spec.resolve(".", data=True)
    for key in ("corpus", "queries", "train"):
        if data.get(key):
            data[key]["path"] = spec.resolve(data[key]["path"])
    for split in data["splits"].values():
        split["path"] = spec.resolve(split["path"])
    out["runtime"]["runs"] = spec.runs_root()
    return out


def json_schema() -> dict:
    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "vectune spec"
    return schema
