"""`vectune mine` refuses bad input with a clear message and exit code 2, before Ray starts."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from vectune.cli import app


def _with(tiny, *, train: dict | None = None, mine: dict | None = None, **files) -> str:
    for name, text in files.items():
        (tiny.root / name).write_text(text, encoding="utf-8")
    mapping = dict(tiny.spec)
    mapping["data"] = dict(mapping["data"])
    if train is not None:
        mapping["data"]["train"] = train
    if mine is not None:
        mapping["mine"] = mine
    tiny.spec_path.write_text(yaml.safe_dump(mapping), encoding="utf-8")
    return str(tiny.spec_path)


def _mine(spec_path: str):
    result = CliRunner().invoke(app, ["mine", spec_path])
    return result.exit_code, result.output + (result.stderr or "")


@pytest.fixture(autouse=True)
def refused_early(tiny_beir):
    """Bad input is refused before the run folder is made, so before Ray starts (which
    comes after it)."""
    yield
    assert not (tiny_beir.root.parent / "runs").exists(), "a run was opened for bad input"


def test_labels_pointing_at_unknown_documents(tiny_beir):
    spec = _with(tiny_beir, train={"path": "train.tsv"}, **{"train.tsv": "q1\td1\t1\nq2\tnope\t1\nq2\td404\t1\n"})
    code, out = _mine(spec)
    assert code == 2
    assert "2 label(s) point at unknown document ids" in out and "'nope'" in out and "train.tsv" in out


def test_empty_query_text(tiny_beir):
    queries = json.dumps({"_id": "q1", "text": "   "}) + "\n" + json.dumps({"_id": "q2", "text": "ok"}) + "\n"
    spec = _with(tiny_beir, train={"path": "train.tsv"}, **{"train.tsv": "q1\td1\t1\n", "queries.jsonl": queries})
    code, out = _mine(spec)
    assert code == 2 and "query 'q1' has empty text" in out and "queries.jsonl:1" in out


def test_empty_query_text_in_pairs(tiny_beir):
    pairs = json.dumps({"query": "fine", "positive": "d1"}) + "\n" + json.dumps({"query": "", "positive": "d2"}) + "\n"
    spec = _with(tiny_beir, train={"path": "pairs.jsonl"}, **{"pairs.jsonl": pairs})
    code, out = _mine(spec)
    assert code == 2 and "pairs.jsonl:2" in out and "missing or empty 'query'" in out


@pytest.mark.parametrize("window, message", [
    ({"range_min": 50, "range_max": 50}, "range_min (50) must be below range_max (50)"),
    ({"range_min": 60, "range_max": 20}, "range_min (60) must be below range_max (20)"),
    ({"range_min": 0, "range_max": 2, "num_negatives": 3}, "holds fewer candidates than num_negatives (3)"),
])
def test_window_out_of_order(tiny_beir, window, message):
    spec = _with(tiny_beir, train={"path": "train.tsv"}, mine=window, **{"train.tsv": "q1\td1\t1\n"})
    code, out = _mine(spec)
    assert code == 2 and "invalid spec" in out and message in out and "mine" in out


def test_no_training_labels(tiny_beir):
    code, out = _mine(_with(tiny_beir))
    assert code == 2 and "data.train" in out and "needs training labels" in out


def test_missing_cross_encoder_folder(tiny_beir):
    spec = _with(tiny_beir, train={"path": "train.tsv"}, mine={"cross_encoder": "no/such/model"},
                 **{"train.tsv": "q1\td1\t1\n"})
    code, out = _mine(spec)
    assert code == 2 and "cross_encoder" in out and "no such folder" in out


def test_click_log_without_clicks(tiny_beir):
    log = json.dumps({"query": "aspirin?", "doc_id": "d1", "clicked": False, "position": 1}) + "\n"
    spec = _with(tiny_beir, train={"path": "clicks.jsonl", "format": "clicks"}, **{"clicks.jsonl": log})
    code, out = _mine(spec)
    assert code == 2 and "no clicked rows" in out
