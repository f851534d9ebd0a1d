"""The `tune.space` of a spec as Ray Tune domains, and a trial's values back into a spec."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from vectune.spec import Spec
from vectune.spec.tune import Choice, LogUniform, Uniform

#: integer-valued fields: a sampled float is rounded (quniform-like) so the spec validates
_INTEGER = {"train.epochs": False, "train.batch_size": True, "train.negatives": True,
            "train.max_seq_length": True, "mine.num_negatives": True, "mine.range_min": True,
            "mine.range_max": True}


def search_space(spec: Spec) -> dict[str, Any]:
    """Ray Tune domains keyed by the dotted parameter name (`train.learning_rate`)."""
    from ray import tune

    out: dict[str, Any] = {}
    for name, domain in spec.tune.space.items():
        integer = _INTEGER.get(name, False)
        if isinstance(domain, Choice):
            out[name] = tune.choice(list(domain.values))
        elif isinstance(domain, LogUniform):
            out[name] = (tune.lograndint(int(domain.low), int(domain.high) + 1) if integer
                         else tune.loguniform(domain.low, domain.high))
        elif isinstance(domain, Uniform):
            out[name] = (tune.randint(int(domain.low), int(domain.high) + 1) if integer
                         else tune.uniform(domain.low, domain.high))
    return out


def _set(mapping: dict, dotted: str, value: Any, filled: dict) -> None:
    """Set `a.b.c` in `mapping`; a level missing there is first copied from `filled` (the spec
    with defaults), so e.g. `train.loss.scale` keeps the loss's `type`."""
    parts = dotted.split(".")
    node, full = mapping, filled
    for part in parts[:-1]:
        full = full[part]
        if not isinstance(node.get(part), dict):
            node[part] = copy.deepcopy(full)
        node = node[part]
    node[parts[-1]] = value


def _plain(value: Any) -> Any:
    """numpy scalars (from Tune's samplers) as plain Python numbers, for YAML and pydantic."""
    return value.item() if hasattr(value, "item") else value


def apply(spec: Spec, config: dict[str, Any]) -> Spec:
    """A copy of `spec` with each dotted parameter of `config` set (validated again)."""
    dump = spec.canonical()
    for name, value in config.items():
        _set(dump, name, _plain(value), dump)
    return spec.revalidated(dump)


def renamed(spec: Spec, name: str) -> Spec:
    """The same spec under another name (tune runs live apart from the spec's own runs)."""
    return spec.derived(name=name)


def write_tuned_spec(spec: Spec, config: dict[str, Any], header: str) -> Path:
    """Write `<spec>.tuned.yaml` next to the original: its YAML with the chosen values set.

    Starting from the user's own mapping (not the fully rendered spec) keeps the file as
    short as the original; relative data paths stay valid because the folder is the same.
    The result is checked with `load_spec` before this returns.
    """
    from vectune.spec import load_spec

    if spec.source is None:
        raise ValueError("the spec was not loaded from a file: nowhere to write the tuned copy")
    source = Path(spec.source)
    mapping = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    filled = spec.canonical()
    for name, value in config.items():
        _set(mapping, name, _plain(value), filled)
    mapping.pop("tune", None)  # the search is done; the tuned spec trains once
    target = source.with_name(source.name.removesuffix(".yaml").removesuffix(".yml") + ".tuned.yaml")
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    target.write_text(comment + yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
    load_spec(target)
    return target
