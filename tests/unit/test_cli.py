"""The CLI: bad specs and bad data answer with the field or file:line, exit code 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from testdata import write_qrels
from vectune.cli import app

REPO = Path(__file__).resolve().parents[2]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_bad_input(result, *needles: str) -> None:
    """Exit code 2, every needle in the output, and no traceback (nothing escaped the CLI)."""
    output = result.output
    assert result.exit_code == 2, output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an uncaught error
    assert "Traceback" not in output
    for needle in needles:
        assert needle in output, f"{needle!r} not in:\n{output}"


# -- malformed specs (vectune validate) ------------------------------------------------
def spec_text(tiny_beir, extra: str = "", replace: tuple[str, str] | None = None) -> str:
    text = tiny_beir.spec_path.read_text()
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    return text + extra


SPEC_CASES = {
    # name: (extra YAML, (old, new) replacement, expected fragments)
    "unknown-key": ("mine:\n  num_negative: 3\n", None, ["line 13: mine.num_negative: unknown key"]),
    "unknown-top-level-key": ("evaluation: {split: test}\n", None, ["line 12: evaluation: unknown key"]),
    "wrong-type": ("train:\n  batch_size: large\n", None,
                   ["line 13: train.batch_size: Input should be a valid integer"]),
    "missing-required": ("", ("  corpus: {path: corpus.jsonl}\n", ""), ["data.corpus: required field is missing"]),
    "invalid-yaml": ("train: {epochs: 1\n", None, ["line 13:", "invalid YAML"]),
    "version-2": ("", ("version: 1", "version: 2"), ["line 2: version: unsupported spec version 2"]),
    "bad-metric": ("evaluate:\n  metrics: [ndcg@10, hit_rate@5]\n", None,
                   ["line 13: evaluate.metrics: unknown metric 'hit_rate@5'"]),
    "split-not-in-data": ("evaluate: {split: dev}\n", None,
                          ["line 12: evaluate.split: 'dev' is not a key of data.splits ['test']"]),
    "mine-range": ("mine: {range_min: 20, range_max: 20}\n", None,
                   ["line 12: mine: range_min (20) must be below range_max (20)"]),
    "unknown-loss": ("train:\n  loss: {type: contrastive}\n", None, ["line 13: train.loss: Input tag 'contrastive'"]),
    "duplicate-key": ("name: again\n", None, ["line 12: name: duplicate key"]),
    "bad-name": ("", ("name: tiny", "name: My Spec"), ["line 3: name: use 1-63 lower-case letters"]),
    "negative-number": ("index: {batch_size: 0}\n", None, ["line 12: index.batch_size: Input should be greater than"]),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_malformed_spec(tiny_beir, case):
    extra, replace, needles = SPEC_CASES[case]
    tiny_beir.spec_path.write_text(spec_text(tiny_beir, extra, replace))
    assert_bad_input(invoke("validate", tiny_beir.spec_path), str(tiny_beir.spec_path), *needles)


def test_several_spec_errors_reported_at_once(tiny_beir):
    extra = ("mine: {range_min: 9, range_max: 3}\ntrain: {epochs: none, colour: red}\n"
             "evaluate: {split: dev, metrics: [ndcg@10, recall@100, mrr@10, f1@3]}\n")
    tiny_beir.spec_path.write_text(spec_text(tiny_beir, extra))
    result = invoke("validate", tiny_beir.spec_path)
    assert_bad_input(result, "line 12: mine: range_min (9)", "line 13: train.epochs", "line 13: train.colour",
                     "line 14: evaluate.metrics: unknown metric 'f1@3'")
    assert result.output.count("\n  - ") == 4


def test_spec_file_missing(tmp_path):
    assert_bad_input(invoke("validate", tmp_path / "absent.yaml"), "absent.yaml", "spec file not found")


# -- malformed data (vectune evaluate fails before Ray or the model start) ---------------
def corrupt_corpus(sl, lines: list[bytes]) -> None:
    sl.corpus_path.write_bytes(b"".join(line + b"\n" for line in lines))


GOOD = [b'{"_id": "d1", "title": "A", "text": "aspirin"}', b'{"_id": "d2", "title": "", "text": "vitamin"}']


def _malformed_json(sl):
    corrupt_corpus(sl, GOOD + [b'{"_id": "d3", "text": "no closing brace"'])
    return f"{sl.corpus_path}:3", "malformed JSON"


def _duplicate_doc(sl):
    corrupt_corpus(sl, GOOD + [b'{"_id": "d4", "text": "x"}', b'{"_id": "d2", "text": "again"}'])
    return f"{sl.corpus_path}:4", "duplicate document id 'd2'"


def _empty_text(sl):
    corrupt_corpus(sl, GOOD + [b'{"_id": "d3", "title": "", "text": "   "}'])
    return f"{sl.corpus_path}:3", "document 'd3' has empty text"


def _non_utf8(sl):
    corrupt_corpus(sl, [GOOD[0], b'{"_id": "d2", "text": "\xff\xfe latin-1 caf\xe9"}'])
    return f"{sl.corpus_path}:2", "not UTF-8"


def _missing_corpus(sl):
    sl.corpus_path.unlink()
    return str(sl.corpus_path), "file not found"


def _unknown_doc_strict(sl):
    write_qrels(sl.qrels_path("test"), {"q1": {"d1": 1}, "q2": {"d2": 1, "d77": 1}})
    return f"{sl.qrels_path('test')}:4", "unknown document ids"


def _non_numeric_score(sl):
    sl.qrels_path("test").write_bytes(b"query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq2\td2\trelevant\r\n")
    return f"{sl.qrels_path('test')}:3", "score 'relevant' is not a number"


def _qrels_columns(sl):
    sl.qrels_path("test").write_bytes(b"q1\td1\t1\r\nq2 d2\r\n")
    return f"{sl.qrels_path('test')}:2", "expected 3 columns"


def _duplicate_query(sl):
    (sl.root / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n{"_id": "q2", "text": "b"}\n'
                                           '{"_id": "q1", "text": "c"}\n')
    return f"{sl.root / 'queries.jsonl'}:3", "duplicate query id 'q1'"


def _queries_not_json(sl):
    (sl.root / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\nq2\tplain text\n')
    return f"{sl.root / 'queries.jsonl'}:2", "malformed JSON"


def _missing_qrels(sl):
    sl.qrels_path("test").unlink()
    return str(sl.qrels_path("test")), "file not found"


DATA_CASES = {f.__name__.lstrip("_"): f for f in (
    _malformed_json, _duplicate_doc, _empty_text, _non_utf8, _missing_corpus, _unknown_doc_strict,
    _non_numeric_score, _qrels_columns, _duplicate_query, _queries_not_json, _missing_qrels)}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_malformed_data(tiny_beir, case):
    where, what = DATA_CASES[case](tiny_beir)
    assert_bad_input(invoke("evaluate", tiny_beir.spec_path), where, what)
    assert not (tiny_beir.root.parent / "runs").exists()  # nothing ran, no run folder left


def test_unknown_split_and_model(tiny_beir):
    assert_bad_input(invoke("evaluate", tiny_beir.spec_path, "--split", "dev"), "no labels named 'dev'")
    assert_bad_input(invoke("evaluate", tiny_beir.spec_path, "--model", "./no-such-model"),
                     "model folder not found: ./no-such-model")


def test_markup_in_user_data_is_printed_verbatim(tiny_beir):
    corrupt_corpus(tiny_beir, [b'{"_id": "[/x]", "text": "a"}', b'{"_id": "[/x]", "text": "b"}'])
    assert_bad_input(invoke("evaluate", tiny_beir.spec_path), f"{tiny_beir.corpus_path}:2",
                     "duplicate document id '[/x]'")


@pytest.mark.parametrize("command", ["validate", "evaluate"])
def test_real_process_exit_code_and_stderr(tiny_beir, command):
    """The installed entry point, in its own process: exit 2, message on stderr, no traceback."""
    if command == "validate":
        tiny_beir.spec_path.write_text(spec_text(tiny_beir, "train: {epochs: soon}\n"))
        needle = "line 12: train.epochs"
    else:
        corrupt_corpus(tiny_beir, GOOD + [b"not json"])
        needle = f"{tiny_beir.corpus_path}:3: malformed JSON"
    exe = Path(sys.executable).with_name("vectune")
    proc = subprocess.run([str(exe), command, str(tiny_beir.spec_path)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout == ""


# -- the commands that work ---------------------------------------------------------------
def test_validate_ok(tiny_beir):
    result = invoke("validate", tiny_beir.spec_path)
    assert result.exit_code == 0 and "valid" in result.output and "name tiny" in result.output
    result = invoke("validate", tiny_beir.spec_path, "--json")
    payload = json.loads(result.stdout)
    assert payload["valid"] is True and payload["name"] == "tiny"
    assert payload["hash"] == tiny_beir.load().digest()


def test_render_yaml_and_json(tiny_beir):
    result = invoke("render", tiny_beir.spec_path)
    assert result.exit_code == 0, result.output
    rendered = yaml.safe_load(result.stdout)
    assert rendered["data"]["corpus"]["path"] == str(tiny_beir.corpus_path)
    assert rendered["data"]["corpus"]["format"] == "beir"
    assert rendered["evaluate"]["metrics"] == ["ndcg@10", "recall@100", "mrr@10"]
    as_json = json.loads(invoke("render", tiny_beir.spec_path, "--json").stdout)
    assert as_json == rendered


def test_render_bad_spec_fails_like_validate(tiny_beir):
    tiny_beir.spec_path.write_text(spec_text(tiny_beir, "bogus: 1\n"))
    assert_bad_input(invoke("render", tiny_beir.spec_path), "line 12: bogus: unknown key")


def test_schema_command_emits_json_schema_that_accepts_shipped_specs():
    result = invoke("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    spec = yaml.safe_load((REPO / "specs" / "scifact.yaml").read_text())
    jsonschema.validate(spec, schema, cls=jsonschema.Draft202012Validator)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**spec, "unknown": 1}, schema, cls=jsonschema.Draft202012Validator)


def test_help_lists_the_core_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("validate", "render", "schema", "evaluate"):
        assert command in result.output


def _json_error(result) -> dict:
    payload = json.loads(result.stdout)
    assert payload["exit_code"] == result.exit_code == 2
    return payload


def test_json_errors_print_one_object_on_stdout(tiny_beir, tmp_path):
    """With --json a script always gets one JSON object on stdout, for every kind of error."""
    missing = _json_error(invoke("validate", str(tmp_path / "none.yaml"), "--json"))
    assert missing["kind"] == "SpecError" and missing["problems"][0]["message"] == "spec file not found"
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(tiny_beir, extra="train: {epochs: .inf}\n"))
    bad = _json_error(invoke("validate", str(spec), "--json"))
    assert {"field": "train.epochs", "message": "Input should be a finite number"}.items() <= bad["problems"][0].items()
    usage = _json_error(invoke("validate", str(spec), "--json", "--no-such-option"))
    assert usage["kind"] == "UsageError" and "--no-such-option" in usage["error"]
    run_id = _json_error(invoke("train", str(spec), "--json", "--run-id", "../../x"))
    assert run_id["kind"] == "InputError" and run_id["field"] == "--run-id"


@pytest.mark.parametrize("command", ["mine", "train", "evaluate", "run", "reindex", "tune"])
@pytest.mark.parametrize("run_id", ["../../x", "/abs/path"])
def test_every_command_refuses_a_path_as_run_id_before_writing(tiny_beir, tmp_path, command, run_id):
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(tiny_beir))
    before = set(tmp_path.rglob("*"))
    result = invoke(command, str(spec), "--run-id", run_id)
    assert_bad_input(result, "is not a run id")
    assert set(tmp_path.rglob("*")) == before and not Path("/abs/path").exists()


def test_validate_checks_the_data_files_and_the_model(tiny_beir, tmp_path):
    spec = tiny_beir.root / "s.yaml"
    spec.write_text(spec_text(tiny_beir))
    ok = invoke("validate", str(spec), "--json")
    assert ok.exit_code == 0, ok.output
    checked = json.loads(ok.stdout)
    assert len(checked["files"]) == 3 and checked["model"]["positions"] == 512 and checked["model"]["dimension"] == 384

    (tiny_beir.root / "corpus.jsonl").rename(tiny_beir.root / "moved.jsonl")
    assert_bad_input(invoke("validate", str(spec)), "corpus.jsonl: file not found")
    assert invoke("validate", str(spec), "--no-data").exit_code == 0  # a spec written ahead of its data
    (tiny_beir.root / "moved.jsonl").rename(tiny_beir.root / "corpus.jsonl")

    spec.write_text(spec_text(tiny_beir, extra=f"model: {{base: {tmp_path / 'no-such-model'}}}\n"))
    assert_bad_input(invoke("validate", str(spec)), "model folder not found", "no-such-model")


def test_a_sequence_length_beyond_the_model_is_refused_before_ray(tiny_beir, tmp_path):
    """model.max_seq_length 1024 on a 512-position model: exit 2 naming the field, read from
    the model's config (not a tensor-size traceback from inside the encoder)."""
    import time

    spec = tiny_beir.root / "s.yaml"
    spec.write_text(spec_text(tiny_beir, extra="model: {max_seq_length: 1024}\n"))
    start = time.monotonic()
    for command in ("validate", "evaluate", "reindex"):
        assert_bad_input(invoke(command, str(spec)), "model.max_seq_length: 1024 tokens", "at most 512")
    assert time.monotonic() - start < 30  # no Ray was started, no model loaded
    spec.write_text(spec_text(tiny_beir, extra="train: {max_seq_length: 600}\n"))
    assert_bad_input(invoke("validate", str(spec)), "train.max_seq_length: 600 tokens")


def test_an_uncached_hub_id_offline_is_named_before_ray(tiny_beir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    spec = tiny_beir.root / "s.yaml"
    spec.write_text(spec_text(tiny_beir, extra="model: {base: some-org/some-model}\n"))
    for command in ("validate", "evaluate"):
        assert_bad_input(invoke(command, str(spec)), "'some-org/some-model' is not a local folder and not in the "
                                                     "Hugging Face cache", "HF_HUB_OFFLINE=1")


def test_an_unforeseen_error_is_one_line_and_exit_1_never_a_traceback(tiny_beir, monkeypatch):
    """The CLI's last net (a stand-in failure: any library error vectune did not foresee)."""
    from vectune import pipeline

    def broken(*args, **kwargs):
        raise ValueError("something deep went wrong\nsecond line")

    monkeypatch.setattr(pipeline, "validate", broken)
    result = invoke("validate", str(tiny_beir.spec_path), "--json")
    assert result.exit_code == 1 and "Traceback" not in result.output
    payload = json.loads(result.stdout)
    assert payload["error"] == "unexpected ValueError: something deep went wrong (run again with -v for the traceback)"


def test_an_error_raised_in_a_ray_worker_keeps_its_exit_code(tiny_beir, monkeypatch):
    """Ray hands a worker's exception back wrapped (RayTaskError keeps it as `.cause`)."""
    from vectune import pipeline
    from vectune.errors import DataError

    class Wrapped(Exception):  # the shape of ray.exceptions.RayTaskError, without a worker
        def __init__(self, cause):
            super().__init__("ray task failed")
            self.cause = cause

    def in_a_worker(*args, **kwargs):
        raise Wrapped(DataError("corpus.jsonl", "bad line", 7))

    monkeypatch.setattr(pipeline, "validate", in_a_worker)
    assert_bad_input(invoke("validate", str(tiny_beir.spec_path)), "corpus.jsonl:7: bad line")


def test_a_model_folder_without_weights_is_named(tiny_beir, tmp_path):
    import shutil

    from vectune.embed import resolve_model

    broken = tmp_path / "half-copied"
    shutil.copytree(resolve_model("all-MiniLM-L6-v2"), broken, ignore=shutil.ignore_patterns("*.safetensors"))
    spec = tiny_beir.root / "s.yaml"
    spec.write_text(spec_text(tiny_beir, extra=f"model: {{base: {broken}}}\n"))
    assert_bad_input(invoke("validate", str(spec)), "model.base", "holds a model config but no weights")


def test_a_gate_split_that_shares_queries_with_training_is_refused(tiny_beir, tmp_path):
    """Held-out hygiene: by id, and by identical text under another id; allowed when the spec says so."""
    import textwrap

    queries = (tiny_beir.root / "queries.jsonl").read_text().splitlines()
    first = json.loads(queries[0])
    (tiny_beir.root / "queries.jsonl").write_text("\n".join(queries + [json.dumps(
        {"_id": "copy", "text": "  " + first["text"].upper() + " "})]) + "\n")
    test_qrels = (tiny_beir.root / "qrels" / "test.tsv").read_text()
    (tiny_beir.root / "qrels" / "train.tsv").write_text(test_qrels)
    spec = tiny_beir.root / "s.yaml"
    spec.write_text(spec_text(tiny_beir, extra=textwrap.dedent("""\
        mine: {num_negatives: 1, range_max: 2}
        """)).replace("  splits:", "  train: {path: qrels/train.tsv}\n  splits:"))
    result = invoke("run", str(spec))
    assert_bad_input(result, "evaluate.split", "are training queries too", "evaluate.overlap: allow")
    # the same labels under other ids but identical texts count too
    lines = test_qrels.splitlines()
    renamed = [lines[0]] + [line.replace(first["_id"], "copy", 1) if line.startswith(first["_id"] + "\t") else None
                            for line in lines[1:]]
    (tiny_beir.root / "qrels" / "train.tsv").write_text("\n".join(x for x in renamed if x) + "\n")
    assert_bad_input(invoke("run", str(spec)), "1 by identical text", "'copy'")


def test_overlap_drop_leaves_the_shared_queries_out_of_training(tiny_beir):
    """`evaluate.overlap: drop`: the training queries the gate's split shares are not trained on."""
    from vectune.data import DomainData
    from vectune.pipeline import _held_out
    from vectune.spec import load_spec

    test_qrels = (tiny_beir.root / "qrels" / "test.tsv").read_text()
    (tiny_beir.root / "qrels" / "train.tsv").write_text(test_qrels + "q9\td1\t1\n")
    (tiny_beir.root / "queries.jsonl").write_text((tiny_beir.root / "queries.jsonl").read_text()
                                                  + json.dumps({"_id": "q9", "text": "only for training"}) + "\n")
    spec = tiny_beir.root / "s.yaml"
    spec.write_text(spec_text(tiny_beir, extra="mine: {num_negatives: 1, range_max: 2}\nevaluate: {overlap: drop}\n")
                    .replace("  splits:", "  train: {path: qrels/train.tsv}\n  splits:"))
    s = load_spec(spec)
    data = DomainData(s)
    shared = set(data.labels("test").qrels)
    _held_out(s, data)
    train = data.labels("train")
    assert set(train.qrels) == {"q9"} and not shared & set(train.queries)
    assert train.dropped["held_out_overlap"] == len(shared)
