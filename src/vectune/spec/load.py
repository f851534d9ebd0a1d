"""Load a YAML spec: every error at once, each with its field path and YAML line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vectune.errors import Problem, SpecError
from vectune.spec.root import Spec


class _Lines:
    """Maps a field path to the YAML line it was written on."""

    def __init__(self, node: yaml.Node | None):
        self.node = node
        self.duplicates: list[Problem] = _duplicate_keys(node, ())

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


def _duplicate_keys(node: yaml.Node | None, loc: tuple[Any, ...]) -> list[Problem]:
    """Keys written twice in one mapping: YAML keeps the last silently, a typo hides."""
    out: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen and name != "<<":  # `<<` merge keys may repeat
                out.append(Problem(_loc_str(loc + (name,)), "duplicate key (written more than once)",
                                   key.start_mark.line + 1))
            seen.add(name)
            out += _duplicate_keys(value, loc + (name,))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out += _duplicate_keys(item, loc + (i,))
    return out


def _loc_str(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # Discriminated unions add the tag ("mnrl") and validators add "function-after[...]"
    # to the location; neither is a key the user wrote.
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in _TAGS)))


def _union_tags(*unions) -> set[str]:
    """The `type` tags of discriminated unions, read from the section classes themselves."""
    from typing import get_args

    return {member.model_fields["type"].default for union in unions for member in get_args(get_args(union)[0])}


def _tags() -> set[str]:
    from vectune.spec.train import LossSpec
    from vectune.spec.tune import Domain

    return _union_tags(LossSpec, Domain)


_TAGS = _tags()


#: values a spec may hold once YAML aliases are expanded: a real spec has a few hundred;
#: a "billion laughs" document of nested aliases would otherwise hang validation
MAX_VALUES = 100_000


def _expanded_size(node: yaml.Node | None, memo: dict[int, int]) -> int:
    """How many values `node` stands for with every alias expanded (linear: shared nodes are memoised)."""
    if node is None:
        return 0
    key = id(node)
    if key not in memo:
        memo[key] = 1  # a cycle counts once (and is refused by the loader anyway)
        if isinstance(node, yaml.MappingNode):
            memo[key] = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            memo[key] = 1 + sum(_expanded_size(v, memo) for v in node.value)
    return memo[key]


def parse_yaml(text: str, source: str) -> tuple[Any, _Lines]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        size = _expanded_size(node, {})
        if size > MAX_VALUES:
            raise SpecError(source, [Problem("", f"the spec expands to {size:,} values (YAML aliases nested in "
                                                 f"aliases?); a spec holds at most {MAX_VALUES:,}", 1)])
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else None
        raise SpecError(source, [Problem("", f"invalid YAML: {exc.problem}", line)]) from None
    except yaml.YAMLError as exc:
        raise SpecError(source, [Problem("", f"invalid YAML: {exc}")]) from None
    return data, _Lines(node)


def _cross_checks(spec: Spec, broken: frozenset[str] = frozenset()) -> list[tuple[tuple[Any, ...], str]]:
    """Rules that span sections (checked after every default is applied).

    `broken` names sections that failed validation: rules reading them are skipped.
    """
    out: list[tuple[tuple[Any, ...], str]] = []
    splits = spec.data.splits if "data" not in broken else {}
    if splits and "evaluate" not in broken and spec.evaluate.split not in splits:
        out.append((("evaluate", "split"), f"{spec.evaluate.split!r} is not a key of data.splits {sorted(splits)}"))
    if "evaluate" not in broken:
        gate = spec.evaluate.gate
        for metric in [gate.metric, *gate.no_regress]:
            if metric not in spec.evaluate.metrics:
                out.append((("evaluate", "gate"), f"gate metric {metric!r} is not in evaluate.metrics"))
    if not {"train", "mine"} & broken and spec.train.negatives is not None \
            and spec.train.negatives > spec.mine.num_negatives:
        out.append((("train", "negatives"), f"{spec.train.negatives} exceeds mine.num_negatives ({spec.mine.num_negatives})"))
    if not {"mine", "data"} & broken and spec.mine.cross_encoder \
            and not Path(spec.resolve(spec.mine.cross_encoder, data=False)).exists():
        out.append((("mine", "cross_encoder"), f"no such folder: {spec.mine.cross_encoder}"))
    if not {"model", "mine", "evaluate", "index"} & broken:
        out += _precision_checks(spec)
    return out


def _precision_checks(spec: Spec) -> list[tuple[tuple[Any, ...], str]]:
    """int8 is a CPU runtime (ONNX Runtime); fp16 is for GPUs: each against the encoding stages' GPUs."""
    gpus = {"mine.num_gpus": spec.mine.num_gpus, "evaluate.num_gpus": spec.evaluate.num_gpus,
            "index.num_gpus": spec.index.num_gpus}
    if spec.model.precision == "int8" and any(gpus.values()):
        asked = ", ".join(f"{k} {v:g}" for k, v in gpus.items() if v)
        return [(("model", "precision"), f"int8 runs on CPUs (ONNX Runtime), but {asked} asks for GPUs: use fp16 "
                                         "on GPUs, or set those to 0")]
    if spec.model.precision == "fp16" and not any(gpus.values()):
        return [(("model", "precision"), "fp16 is for GPUs, but no stage that encodes asks for one (mine.num_gpus, "
                                         "evaluate.num_gpus and index.num_gpus are 0): use int8 or bf16 on CPUs, or "
                                         "give those stages GPUs")]
    return []


def _partial_spec(data: dict, broken: set[str], source: Path | None) -> Spec:
    """A spec of the sections that validated (defaults for the rest), so cross-section
    rules can be reported in the same pass as field errors."""
    sections: dict[str, Any] = {}
    for name, info in Spec.model_fields.items():
        if name in ("version", "name") or name in broken:
            continue
        if name in data:
            try:
                sections[name] = info.annotation.model_validate(data[name])
            except ValidationError:
                broken.add(name)
        elif not info.is_required():
            sections[name] = info.get_default(call_default_factory=True)
        else:
            broken.add(name)
    spec = Spec.model_construct(**sections)
    spec._source = source.resolve() if source else None
    return spec


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
    return _with_overrides(data, overrides, lambda d: validate_dict(d, str(path), lines, source=path))


#: the spec's YAML text, for a job started without a spec file (`vectune submit --image`)
SPEC_ENV = "VECTUNE_SPEC_YAML"


def load_spec_text(text: str, name: str, overrides: dict[str, Any] | None = None) -> Spec:
    """A spec from YAML text (no file: relative paths resolve against the working folder)."""
    data, lines = parse_yaml(text, name)
    if not isinstance(data, dict):
        raise SpecError(name, [Problem("", "the spec must be a YAML mapping of sections", 1)])
    return _with_overrides(data, overrides, lambda d: validate_dict(d, name, lines))


def load_spec_from(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Spec:
    """The spec at `path`, or, when no path is given, the YAML text in $VECTUNE_SPEC_YAML."""
    import os

    if path:
        return load_spec(path, overrides)
    if os.environ.get(SPEC_ENV):
        return load_spec_text(os.environ[SPEC_ENV], f"${SPEC_ENV}", overrides)
    raise SpecError("<none>", [Problem("", f"no spec: pass --spec PATH or set {SPEC_ENV}")])


def validate_dict(data: dict, name: str, lines: _Lines | None = None, source: Path | None = None) -> Spec:
    """Validate an already-parsed spec mapping."""
    lines = lines or _Lines(None)
    problems = list(lines.duplicates)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        broken: set[str] = set()
        for err in exc.errors(include_url=False):
            loc = _clean_loc(tuple(err["loc"]))
            if loc:
                broken.add(str(loc[0]))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (not part of this section)"
            elif err["type"] == "missing":
                msg = "required field is missing"
            elif loc == ("version",):
                msg = f"unsupported spec version {err.get('input')!r}; this vectune reads version 1"
            problems.append(Problem(_loc_str(loc), msg, lines.line(loc)))
        spec = _partial_spec(data, broken, source)
        cross = _cross_checks(spec, frozenset(broken))
        problems += [Problem(_loc_str(loc), msg, lines.line(loc)) for loc, msg in cross]
        raise SpecError(name, sorted(problems, key=lambda p: p.line or 0)) from None
    spec._source = source.resolve() if source else None
    problems += [Problem(_loc_str(loc), msg, lines.line(loc)) for loc, msg in _cross_checks(spec)]
    if problems:
        raise SpecError(name, sorted(problems, key=lambda p: p.line or 0))
    return spec


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`--set` items (`train.epochs=3`) as dotted keys and values, each value read as YAML
    (`3` an int, `[a, b]` a list, `null` None), exactly as it would be in the file.

    Raises:
        SpecError: an item is not `KEY=VALUE` with a dotted key of spec field names.
    """
    out: dict[str, Any] = {}
    problems = []
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_@0-9][A-Za-z0-9_@-]*)*", key):
            problems.append(Problem(key or item, f"--set {item!r}: expected KEY=VALUE with a dotted key "
                                                 "(train.epochs=3)"))
            continue
        try:
            out[key] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            problems.append(Problem(key, f"--set {item!r}: the value is not valid YAML ({exc})"))
    if problems:
        raise SpecError("--set", problems)
    return out


def _with_overrides(data: dict, overrides: dict[str, Any] | None, validate) -> Spec:
    """Apply `overrides` to the parsed mapping, validate it as a whole, and keep them on the
    spec (the run manifest records them; the spec hash covers the values they set). A problem
    in a field an override set says so."""
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        _set_dotted(data, key, value)
    try:
        spec = validate(data)
    except SpecError as exc:
        problems = []
        for problem in exc.problems:
            key = next((k for k in overrides if problem.path == k or problem.path.startswith((k + ".", k + "["))),
                       None)
            if key is not None:
                problem = Problem(problem.path, f"{problem.message} (set with --set {key}={overrides[key]!r})")
            problems.append(problem)
        raise SpecError(exc.source, problems) from None
    spec._overrides = overrides
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
    data["root"] = spec.data.root if "://" in spec.data.root else spec.resolve(".", data=True)
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
