"""Property test: mutated specs never end in a traceback.

Hypothesis mutates the shipped-style spec of a tiny BEIR folder (a value's type or size,
a key removed, renamed or added, a section nested or flattened) and runs `vectune validate`
on it, with and without the data check. Whatever the mutation: exit 0 or 2, never an
escaped exception, and exit 2 always names where (a spec field with its line, a file, or a
setting), in the one JSON object `--json` prints."""

from __future__ import annotations

import json
import math
import re

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vectune.cli import app

SECTIONS = r"\b(version|name|data|model|mine|train|evaluate|index|runtime|tune)(\.|\b)"

ODD_VALUES = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 1e-300, 1e300, "1e26", ".inf", "", " ", "auto", "none", "0x10",
                     "../../etc", "/nonexistent", "a\u2028b", "ndcg", "ndcg@0", "mnrl", "gist", "local"]),
    st.text(max_size=12),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.sampled_from(["path", "type", "x", "format"]), st.integers(-2, 2), max_size=2),
)


def _paths(node, prefix=()):
    """Every key path of a nested mapping/list (the places a mutation can hit)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield prefix + (i,)
            yield from _paths(value, prefix + (i,))


def _parent(mapping, path):
    node = mapping
    for part in path[:-1]:
        node = node[part]
    return node


@st.composite
def mutated(draw, base: dict) -> dict:
    import copy

    spec = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(spec))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(spec, path)
        key = path[-1]
        action = draw(st.sampled_from(["value", "value", "value", "delete", "rename", "add", "nest", "flatten"]))
        if action == "value":
            parent[key] = draw(ODD_VALUES)
        elif action == "delete":
            del parent[key]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["epoch", "Batch_size", "train", "x.y", "0"]))] = parent.pop(key)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "unknown_key", "typo"]))] = draw(ODD_VALUES)
        elif action == "nest":
            parent[key] = {"value": parent[key]}
        elif action == "flatten" and isinstance(parent[key], dict) and parent[key]:
            parent[key] = next(iter(parent[key].values()))
    return spec


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"invalid JSON constant {name} on stdout")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from testdata import TINY_CORPUS, TINY_QRELS, TINY_QUERIES, write_qrels

    root = tmp_path_factory.mktemp("fuzz")
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in TINY_CORPUS))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in TINY_QUERIES))
    (root / "qrels").mkdir()
    write_qrels(root / "qrels" / "test.tsv", TINY_QRELS)
    mapping = {
        "version": 1, "name": "fuzz",
        "data": {"root": str(root), "corpus": {"path": "corpus.jsonl"}, "queries": {"path": "queries.jsonl"},
                 "train": {"path": "qrels/test.tsv"}, "splits": {"test": {"path": "qrels/test.tsv"}}},
        "model": {"base": "all-MiniLM-L6-v2", "max_seq_length": 128},
        "mine": {"num_negatives": 2, "range_max": 50, "relative_margin": 0.05},
        "train": {"loss": {"type": "mnrl", "scale": 20}, "epochs": 1, "batch_size": 16, "learning_rate": 5e-5,
                  "interpolation": [0.5, 1.0]},
        "evaluate": {"split": "test", "metrics": ["ndcg@10", "recall@100"],
                     "gate": {"metric": "ndcg@10", "min_gain": 0.005, "no_regress": ["recall@100"]}},
        "index": {"collection": "fuzz", "qdrant": {"timeout": 10, "retries": 2}},
        "runtime": {"address": "local", "runs": str(root / "runs")},
        "tune": {"space": {"train.learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}, "trials": 2},
    }
    return root, mapping


def _check(result, data: bool) -> None:
    assert result.exit_code in (0, 2), (result.exit_code, result.output[-2000:], repr(result.exception))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    payload = _strict_json(result.stdout)
    if result.exit_code == 0:
        assert payload["valid"] is True
        return
    assert payload["exit_code"] == 2
    if payload["kind"] == "SpecError":
        assert payload["problems"]
        for problem in payload["problems"]:
            assert problem["field"] or problem["line"], problem
            assert problem["message"]
    elif payload["kind"] == "DataError":
        assert payload["file"]
    else:
        assert data and re.search(SECTIONS, payload["error"]), payload


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_specs_exit_0_or_2_and_2_names_where(base, data):
    root, mapping = base
    spec = data.draw(mutated(mapping))
    with_data = data.draw(st.booleans())
    path = root / "spec.yaml"
    try:
        text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        return
    path.write_text(text, encoding="utf-8")
    args = ["validate", str(path), "--json"] + ([] if with_data else ["--no-data"])
    result = CliRunner().invoke(app, args)
    _check(result, with_data)
    event(f"exit {result.exit_code} {json.loads(result.stdout).get('kind', 'valid')}")
    if result.exit_code == 0:  # what validates also renders as strict JSON
        rendered = CliRunner().invoke(app, ["render", str(path), "--json"])
        assert rendered.exit_code == 0, rendered.output[-2000:]
        _strict_json(rendered.stdout)
        assert not any(isinstance(v, float) and not math.isfinite(v) for v in _leaves(_strict_json(rendered.stdout)))


def _leaves(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _leaves(v)
    elif isinstance(node, list):
        for v in node:
            yield from _leaves(v)
    else:
        yield node
