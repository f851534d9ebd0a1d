"""The spec: strict loading with every problem located, defaults, paths, schema, identity."""

from __future__ import annotations

import textwrap
from pathlib import Path

import jsonschema
import pydantic
import pytest
import yaml

from vectune.errors import SpecError
from vectune.spec import Spec, json_schema, load_spec, render, validate_dict

MINIMAL = """\
version: 1
name: demo
data:
  root: data
  corpus: {path: corpus.jsonl}
  queries: {path: queries.jsonl}
  splits:
    test: {path: qrels/test.tsv}
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text))
    return [str(p) for p in info.value.problems]


def test_minimal_spec_gets_every_default(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL))
    assert spec.name == "demo"
    assert spec.model.base == "all-MiniLM-L6-v2"
    assert spec.evaluate.metrics == ["ndcg@10", "recall@100", "mrr@10"]
    assert spec.evaluate.depth == 100  # the largest cutoff
    assert spec.mine.range_max == 100 and spec.train.loss.type == "mnrl"
    # formats inferred from suffixes
    assert spec.data.corpus.format == "beir"
    assert spec.data.splits["test"].format == "qrels"


def test_render_fills_defaults_and_resolves_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(write(tmp_path, MINIMAL + "runtime: {runs: out/runs}\n"))
    out = render(spec)
    data_root = tmp_path / "data"
    assert out["data"]["root"] == str(data_root)
    assert out["data"]["corpus"]["path"] == str(data_root / "corpus.jsonl")
    assert out["data"]["queries"]["path"] == str(data_root / "queries.jsonl")
    assert out["data"]["splits"]["test"]["path"] == str(data_root / "qrels" / "test.tsv")
    assert out["runtime"]["runs"] == str(tmp_path / "out" / "runs")
    # every section is there with its defaults, and the result is itself a valid spec
    for section in ("model", "mine", "train", "evaluate", "index", "tune", "runtime"):
        assert section in out
    assert out["train"]["learning_rate"] == 2e-5 and out["index"]["distance"] == "cosine"
    again = validate_dict(out, "rendered")
    assert again.digest() != "" and again.mine == spec.mine


def test_paths_resolve_against_the_spec_folder_not_the_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "specs"
    sub.mkdir()
    spec = load_spec(write(sub, MINIMAL.replace("root: data", "root: ../shared")))
    monkeypatch.chdir("/")
    assert spec.resolve(spec.data.corpus.path) == str(tmp_path / "shared" / "corpus.jsonl")
    assert spec.resolve("/abs/file.jsonl") == "/abs/file.jsonl"
    assert spec.resolve("s3://bucket/corpus.jsonl") == "s3://bucket/corpus.jsonl"
    assert spec.resolve("model", data=False) == str(sub / "model")


def test_uri_data_root_is_joined_not_resolved(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL.replace("root: data", "root: s3://bucket/scifact/")))
    assert spec.resolve("corpus.jsonl") == "s3://bucket/scifact/corpus.jsonl"
    rendered = render(spec)["data"]
    assert rendered["root"] == "s3://bucket/scifact/"
    assert rendered["splits"]["test"]["path"] == "s3://bucket/scifact/qrels/test.tsv"


def test_runs_root_env_override(tmp_path, monkeypatch):
    spec = load_spec(write(tmp_path, MINIMAL + "runtime: {runs: a}\n"))
    monkeypatch.setenv("VECTUNE_RUNS", str(tmp_path / "elsewhere"))
    assert spec.runs_root() == str(tmp_path / "elsewhere")


def test_overrides_apply_before_validation(tmp_path):
    path = write(tmp_path, MINIMAL)
    spec = load_spec(path, overrides={"train.epochs": 3, "mine.num_negatives": 5})
    assert spec.train.epochs == 3 and spec.mine.num_negatives == 5
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides={"train.epochs": "many"})
    assert "train.epochs" in str(info.value)


def test_digest_is_stable_and_tracks_every_setting(tmp_path):
    a = load_spec(write(tmp_path, MINIMAL, "a.yaml"))
    b = load_spec(write(tmp_path, MINIMAL + "evaluate: {k: 100}\n", "b.yaml"))  # only a default, spelled out
    c = load_spec(write(tmp_path, MINIMAL + "train: {epochs: 2}\n", "c.yaml"))
    assert a.digest() == load_spec(tmp_path / "a.yaml").digest()
    assert len(a.digest()) == 16
    assert a.digest() != c.digest()
    assert a.section_digest("data", "model") == c.section_digest("data", "model")
    assert a.section_digest("train") != c.section_digest("train")
    assert a.digest() != b.digest()  # k=None and k=100 are different settings


# -- every problem, located ---------------------------------------------------------------
def test_unknown_key_names_its_path_and_line(tmp_path):
    found = problems(tmp_path, MINIMAL + "mine:\n  num_negatives: 3\n  rangemax: 10\n")
    assert found == ["line 11: mine.rangemax: unknown key (not part of this section)"]


def test_all_errors_are_reported_at_once(tmp_path):
    text = MINIMAL + textwrap.dedent("""\
        mine:
          range_min: 50
          range_max: 10
        train:
          epochs: lots
          loss: {type: mnrl, scael: 20}
        evaluate:
          split: dev
          metrics: [ndcg@10, hits@5]
        colour: blue
        """)
    found = problems(tmp_path, text)
    joined = "\n".join(found)
    for needle in ("line 9: mine: range_min (50) must be below range_max (10)",
                   "line 13: train.epochs:",
                   "line 14: train.loss.scael: unknown key",
                   "line 17: evaluate.metrics",
                   "'hits@5'",
                   "line 18: colour: unknown key"):
        assert needle in joined, joined
    assert len(found) == 5


def test_cross_section_rules_are_reported_with_field_errors(tmp_path):
    found = problems(tmp_path, MINIMAL + "evaluate: {split: dev}\ntrain: {epochs: -1}\n")
    assert any(p.startswith("line 9: evaluate.split: 'dev' is not a key of data.splits") for p in found), found
    assert any(p.startswith("line 10: train.epochs:") for p in found), found


def test_cross_section_rules_skip_broken_sections(tmp_path):
    # evaluate itself is broken: no extra noise about its split or gate
    found = problems(tmp_path, MINIMAL + "evaluate: {split: dev, metrics: [bogus]}\n")
    assert len(found) == 1 and "evaluate.metrics" in found[0]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("train: {epochs: abc}\n", "line 9: train.epochs: Input should be a valid number"),
        ("evaluate: {metrics: [ndcg@10, ndcg]}\n", "evaluate.metrics: unknown metric 'ndcg'"),
        ("evaluate: {k: 10}\n", "evaluate: k=10 is shallower than the deepest metric cutoff (100)"),
        ("evaluate: {split: dev}\n", "evaluate.split: 'dev' is not a key of data.splits ['test']"),
        ("mine: {range_min: 5, range_max: 5}\n", "line 9: mine: range_min (5) must be below range_max (5)"),
        ("mine: {range_min: 0, range_max: 2}\n", "fewer candidates than num_negatives (3)"),
        ("train: {loss: {type: arcface}}\n", "train.loss: Input tag 'arcface'"),
        ("train: {negatives: 9}\n", "train.negatives: 9 exceeds mine.num_negatives (3)"),
        ("evaluate: {gate: {metric: map@10}}\n", "gate metric 'map@10' is not in evaluate.metrics"),
        ("tune: {space: {train.dropout: {type: choice, values: [0.1]}}}\n",
         "tune.space: cannot tune ['train.dropout']"),
        ("tune:\n  space:\n    train.learning_rate: {type: loguniform, low: 0, high: 1}\n",
         "line 11: tune.space.train.learning_rate: loguniform needs low > 0"),
        ("index: {qdrant: {path: /x, url: 'http://q:6333'}}\n", "index.qdrant: set either `path`"),
        ("runtime: {address: nowhere}\n", "runtime.address: address must be"),
        ("model: {precision: fp8}\n", "line 9: model.precision: Input should be 'auto', 'fp32', 'bf16', 'int8' or 'fp16'"),
        ("model: {precision: fp16}\n", "line 9: model.precision: fp16 is for GPUs, but no stage that encodes"),
        ("model: {precision: int8}\nindex: {num_gpus: 1}\n",
         "line 9: model.precision: int8 runs on CPUs (ONNX Runtime), but index.num_gpus 1 asks for GPUs"),
        ("mine: {num_gpus: -1}\n", "mine.num_gpus: Input should be greater than or equal to 0"),
        ("name: Bad Name\n", "line 9: name: duplicate key"),
    ],
)
def test_field_errors(tmp_path, extra, needle):
    found = problems(tmp_path, MINIMAL + extra)
    assert any(needle in p for p in found), found


@pytest.mark.parametrize("extra", ["model: {precision: int8}\n",
                                   "model: {precision: fp16}\nmine: {num_gpus: 0.5}\nevaluate: {num_gpus: 0.5}\n"])
def test_precisions_that_fit_the_devices_load(tmp_path, extra):
    spec = load_spec(write(tmp_path, MINIMAL + extra))
    assert spec.model.precision in ("int8", "fp16")


def test_missing_required_fields(tmp_path):
    found = problems(tmp_path, "version: 1\ndata:\n  queries: {path: q.jsonl}\n")
    assert "line 1: name: required field is missing" in found
    assert "line 2: data.corpus: required field is missing" in found


def test_version_2_is_refused_by_name(tmp_path):
    found = problems(tmp_path, MINIMAL.replace("version: 1", "version: 2"))
    assert found == ["line 1: version: unsupported spec version 2; this vectune reads version 1"]


def test_invalid_yaml_names_the_line(tmp_path):
    found = problems(tmp_path, MINIMAL + "train:\n  epochs: [1, 2\n  batch_size: 4\n")
    assert len(found) == 1 and "invalid YAML" in found[0]
    assert found[0].startswith("line 11:")  # where the flow sequence breaks


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_spec_must_be_a_mapping(tmp_path, text):
    found = problems(tmp_path, text)
    assert "the spec must be a YAML mapping" in found[0]


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_non_utf8_spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(MINIMAL.encode() + b"# caf\xe9\n")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(path)


def test_qrels_labels_need_queries(tmp_path):
    found = problems(tmp_path, MINIMAL.replace("  queries: {path: queries.jsonl}\n", ""))
    assert any("data: `queries` is required" in p for p in found), found


def test_unknown_corpus_suffix_needs_a_format(tmp_path):
    found = problems(tmp_path, MINIMAL.replace("corpus.jsonl", "corpus.csv"))
    assert any("data.corpus: cannot infer the format" in p for p in found), found


def test_exit_code_is_bad_input(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, MINIMAL + "x: 1\n"))
    assert info.value.exit_code == 2


# -- JSON Schema ----------------------------------------------------------------------------
def test_json_schema_is_valid_and_accepts_the_shipped_spec():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    shipped = Path(__file__).resolve().parents[2] / "specs" / "scifact.yaml"
    jsonschema.validate(yaml.safe_load(shipped.read_text()), schema, cls=jsonschema.Draft202012Validator)


def test_json_schema_rejects_what_the_loader_rejects():
    schema = json_schema()
    good = yaml.safe_load(MINIMAL)
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors(good))
    assert list(validator.iter_errors({**good, "colour": "blue"}))  # unknown key
    assert list(validator.iter_errors({**good, "mine": {"num_negatives": "three"}}))  # wrong type
    assert list(validator.iter_errors({k: v for k, v in good.items() if k != "data"}))  # missing section


def test_spec_object_is_typed_not_a_dict(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL))
    assert isinstance(spec, Spec)
    with pytest.raises(pydantic.ValidationError, match="epochs"):
        spec.train.epochs = "lots"  # validate_assignment keeps the typed object honest


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("index: {qdrant: {timeout: .inf}}\n", "index.qdrant.timeout: Input should be a finite number"),
        ("mine: {margin: .nan}\n", "mine.margin: Input should be a finite number"),
        ("train: {learning_rate: .nan}\n", "train.learning_rate: Input should be a finite number"),
        ("train: {interpolation: [0.5, .nan]}\n", "train.interpolation[1]: Input should be a finite number"),
        ("index: {qdrant: {retries: 1000000000}}\n", "index.qdrant.retries: Input should be less than or equal to 20"),
        ("train: {epochs: 1e300}\n", "train.epochs: Input should be less than or equal to 1000"),
        ("train: {batch_size: 100000000000000000000000000}\n", "train.batch_size: Input should be less than or equal"),
        ("train: {batch_size: true}\n", "train.batch_size: expected a number, not a boolean (true)"),
        ("mine: {num_negatives: false}\n", "mine.num_negatives: expected a number, not a boolean (false)"),
        ("train: {interpolation: [true, 0.5]}\n", "train.interpolation: expected a number, not a boolean"),
    ],
)
def test_numbers_are_finite_bounded_and_never_booleans(tmp_path, extra, needle):
    """Non-finite, absurd and boolean numbers are refused where they enter, naming the field."""
    found = problems(tmp_path, MINIMAL + extra)
    assert any(needle in p for p in found), found


def _numeric_fields(model, prefix=""):
    """(dotted name, FieldInfo) of every int/float field of a section and its sub-sections."""
    import typing

    from pydantic import BaseModel

    from vectune.spec._base import _numeric_without_bool

    for name, info in model.model_fields.items():
        members = [info.annotation]
        while members:
            ann = members.pop()
            args = typing.get_args(ann)
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                yield from _numeric_fields(ann, f"{prefix}{name}.")
            elif args:
                members += list(args)
        if _numeric_without_bool(info.annotation):
            yield prefix + name, info


def test_every_numeric_field_declares_an_upper_bound():
    """The class of fault behind `retries: 1000000000` and `epochs: 1e300`: a number
    field without a ceiling. Every field (and every new one) must declare `le`/`lt`."""
    import annotated_types
    import typing

    def bounds(ann) -> list:
        """Constraints anywhere inside an annotation (Annotated members, list items)."""
        found = [m for meta in getattr(ann, "__metadata__", ()) for m in [meta, *getattr(meta, "metadata", ())]]
        return found + [m for arg in typing.get_args(ann) for m in bounds(arg)]

    def bounded(info) -> bool:
        metadata = list(info.metadata) + bounds(info.annotation)
        return any(isinstance(m, (annotated_types.Le, annotated_types.Lt)) for m in metadata)

    fields = dict(_numeric_fields(Spec))
    assert "train.epochs" in fields and "index.qdrant.retries" in fields and "tune.space" not in fields
    unbounded = sorted(name for name, info in fields.items() if not bounded(info))
    assert not unbounded, f"numeric spec fields without an upper bound: {unbounded}"


def test_nested_yaml_aliases_are_refused_before_they_expand(tmp_path):
    """A "billion laughs" spec: 9^8 values behind a few lines. Refused at once by counting
    the alias graph (linear), never expanded (validation took 17 s at 9^7, minutes beyond)."""
    import time

    levels = "".join(f"  k{i}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(7))
    text = MINIMAL + "tune:\n  k: &a [1,1,1,1,1,1,1,1,1]\n" + levels + "evaluate:\n  metrics: *h\n"
    start = time.monotonic()
    found = problems(tmp_path, text)
    assert time.monotonic() - start < 5
    assert any("the spec expands to" in p and "YAML aliases" in p for p in found), found
