"""Loaders: BEIR qrels and corpora, JSONL pairs, click logs, parquet, and the Ray Dataset read."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from testdata import TINY_CORPUS, TINY_QRELS, write_qrels
from vectune.data import DomainData, doc_text, query_id_for
from vectune.data.corpus import check_corpus, checked_batches
from vectune.data.labels import load_labels, read_clicks, read_pairs, read_qrels
from vectune.errors import DataError
from vectune.spec import validate_dict
from vectune.spec.data import CorpusSource, LabelSource


def spec_for(root, data: dict, tmp_path=None):
    mapping = {"version": 1, "name": "t", "data": {"root": str(root), **data},
               "runtime": {"runs": str((tmp_path or root) / "runs")}}
    return validate_dict(mapping, "test")


# -- qrels --------------------------------------------------------------------------------
@pytest.mark.parametrize("crlf", [True, False], ids=["crlf", "lf"])
@pytest.mark.parametrize("header", [True, False], ids=["header", "no-header"])
def test_qrels_line_ends_and_header(tmp_path, crlf, header):
    qrels = {"q1": {"d1": 1, "d3": 2}, "q2": {"d2": 1}}
    path = tmp_path / "q.tsv"
    write_qrels(path, qrels, crlf=crlf, header=header)
    got, where = read_qrels(str(path))
    assert got == qrels  # no "\r" left on the scores or ids
    first = 2 if header else 1
    assert where[("q1", "d1")] == first and where[("q2", "d2")] == first + 2


def test_qrels_trec_four_columns_spaces_and_min_score(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("q1 0 d1 1\nq1 0 d2 0\nq2 0 d3 2\n\n")
    got, _ = read_qrels(str(path))
    assert got == {"q1": {"d1": 1}, "q2": {"d3": 2}}  # score 0 is not relevant
    got, _ = read_qrels(str(path), min_score=2)
    assert got == {"q2": {"d3": 2}}


def test_qrels_bad_rows_name_file_and_line(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\tyes\n")
    with pytest.raises(DataError, match=r"q\.tsv:3: score 'yes' is not a number"):
        read_qrels(str(path))
    path.write_text("q1\td1\t1\nq2\td2\n")
    with pytest.raises(DataError, match=r"q\.tsv:2: expected 3 columns"):
        read_qrels(str(path))
    path.write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(DataError, match="no relevant"):
        read_qrels(str(path))


def test_scifact_qrels_as_shipped(scifact_dir):
    qrels, _ = read_qrels(str(scifact_dir / "qrels" / "test.tsv"))
    assert len(qrels) == 300 and sum(len(d) for d in qrels.values()) == 339
    qrels, _ = read_qrels(str(scifact_dir / "qrels" / "train.tsv"))
    assert len(qrels) == 809 and sum(len(d) for d in qrels.values()) == 919


# -- corpus -------------------------------------------------------------------------------
def test_doc_text_is_title_space_text():
    assert doc_text("Aspirin", "lowers risk.") == "Aspirin lowers risk."
    assert doc_text("", "only text") == "only text"
    assert doc_text(None, "only text") == "only text"
    assert doc_text("only title", None) == "only title"


def test_check_corpus_counts_ids_and_hashes(tiny_beir):
    import hashlib

    info = check_corpus(CorpusSource(path="corpus.jsonl"), str(tiny_beir.corpus_path))
    assert info.count == 4 and info.ids == {"d1", "d2", "d3", "d4"}
    assert info.sha256 == hashlib.sha256(tiny_beir.corpus_path.read_bytes()).hexdigest()


def test_the_corpus_digest_without_parsing_is_the_validation_pass_digest(tiny_beir):
    """`DomainData.corpus_sha256` (what an untouched-file sync compares with its stamp, the file
    never parsed) is the validation pass's sha256; `corpus_reading` names how the file is read
    (format and fields, not the path), and `corpus_batches` streams its documents as the Ray
    Dataset has them."""
    unparsed = DomainData(tiny_beir.load())
    digest = unparsed.corpus_sha256
    assert "corpus" not in unparsed.__dict__  # nothing was parsed for it
    assert digest == DomainData(tiny_beir.load()).corpus.sha256
    assert unparsed.corpus_reading == DomainData(tiny_beir.load()).corpus_reading
    other = tiny_beir.load().derived(data=tiny_beir.load().data.model_copy(update={
        "corpus": tiny_beir.load().data.corpus.model_copy(update={"title_field": None})}))
    assert DomainData(other).corpus_reading != unparsed.corpus_reading
    batches = list(unparsed.corpus_batches(3))
    assert [len(b["doc_id"]) for b in batches] == [3, 1]
    assert [d for b in batches for d in b["doc_id"]] == ["d1", "d2", "d3", "d4"]
    assert all(set(b) == {"doc_id", "title", "text"} for b in batches)


def test_corpus_tolerates_crlf_blank_lines_and_no_final_newline(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [json.dumps(r) for r in TINY_CORPUS]
    path.write_bytes(("\r\n".join(rows[:2]) + "\r\n\r\n" + "\n".join(rows[2:]) + "\n  ").encode())
    info = check_corpus(CorpusSource(path="c.jsonl"), str(path))
    assert info.count == 4


@pytest.mark.parametrize(
    ("lines", "pattern"),
    [
        (['{"_id": "d1", "text": "a"}', '{"_id": "d2", "text": "b"', '{"_id": "d3", "text": "c"}'],
         r"c\.jsonl:2: malformed JSON"),
        (['{"_id": "d1", "text": "a"}', '["d2", "b"]'], r"c\.jsonl:2: each line must be a JSON object"),
        (['{"_id": "d1", "text": "a"}', '{"_id": "d2", "text": "b"}', '{"_id": "d1", "text": "c"}'],
         r"c\.jsonl:3: duplicate document id 'd1'"),
        (['{"_id": "d1", "text": "a"}', '{"_id": "d2", "title": " ", "text": ""}'],
         r"c\.jsonl:2: document 'd2' has empty text"),
        (['{"_id": "d1", "text": "a"}', '{"text": "no id"}'], r"c\.jsonl:2: line has no document id"),
        ([], r"c\.jsonl: the corpus has no documents"),
    ],
)
def test_corpus_errors_name_file_and_line(tmp_path, lines, pattern):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(DataError, match=pattern) as info:
        check_corpus(CorpusSource(path="c.jsonl"), str(path))
    assert info.value.exit_code == 2
    # the same pass streamed in batches (a sync's diff): the same error, and no info for a bad corpus
    done: list = []
    with pytest.raises(DataError, match=pattern):
        for _ in checked_batches(CorpusSource(path="c.jsonl"), str(path), 1, done):
            pass
    assert done == []


def test_the_checked_batches_are_iter_corpus_batches_and_the_pass_is_check_corpus(tmp_path, monkeypatch):
    """A caller that streams the corpus before it was validated (the sync's diff) gets the
    documents `iter_corpus` reads and, after the last batch, what `check_corpus` learns; a
    `DomainData` that streamed it so never parses it again."""
    from vectune.data.corpus import iter_corpus

    path = tmp_path / "c.jsonl"
    docs = [{"_id": f"d{i}", "title": "" if i % 3 else f"T{i}", "text": f"text {i}"} for i in range(10)]
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    source = CorpusSource(path="c.jsonl")
    done: list = []
    streamed = list(checked_batches(source, str(path), 4, done))
    assert streamed == list(iter_corpus(source, str(path), 4)) and [len(b["doc_id"]) for b in streamed] == [4, 4, 2]
    want = check_corpus(source, str(path))
    (got,) = done
    assert (got.count, got.sha256, set(got.ids)) == (want.count, want.sha256, set(want.ids))

    spec = validate_dict({"version": 1, "name": "c", "data": {"corpus": {"path": str(path)}}}, "spec.yaml")
    data = DomainData(spec)
    import vectune.data

    def second_parse(*args):
        raise AssertionError("the corpus was parsed by a validation pass of its own")

    monkeypatch.setattr(vectune.data, "check_corpus", second_parse)
    assert [b["doc_id"] for b in data.corpus_batches(4)] == [b["doc_id"] for b in streamed]
    assert "corpus" in data.__dict__ and data.corpus.sha256 == want.sha256  # known now, not parsed again
    assert list(data.corpus_batches(4)) == streamed  # and the next pass reads without checking


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"c\.jsonl:2: bytes that are not UTF-8 at column 27"):
        check_corpus(CorpusSource(path="c.jsonl"), str(path))


def test_missing_corpus_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        check_corpus(CorpusSource(path="nope.jsonl"), str(tmp_path / "nope.jsonl"))


def write_parquet_corpus(path, ids, titles, texts):
    pq.write_table(pa.table({"doc_id": ids, "heading": titles, "body": texts, "extra": [1] * len(ids)}), path)


def test_parquet_corpus_check(tmp_path):
    path = tmp_path / "c.parquet"
    write_parquet_corpus(path, ["a", "b", "c"], ["T", None, ""], ["x", "y", "z"])
    source = CorpusSource(path="c.parquet", id_field="doc_id", title_field="heading", text_field="body")
    assert source.format == "parquet"
    info = check_corpus(source, str(path))
    assert info.count == 3 and info.ids == {"a", "b", "c"}
    wrong = CorpusSource(path="c.parquet", id_field="id", text_field="body", title_field=None)
    with pytest.raises(DataError, match=r"missing column\(s\) \['id'\]"):
        check_corpus(wrong, str(path))
    write_parquet_corpus(path, ["a", "a"], ["", ""], ["x", "y"])
    with pytest.raises(DataError, match=r"c\.parquet:2: duplicate document id 'a'"):
        check_corpus(source, str(path))


# -- queries and labels -----------------------------------------------------------------
def test_domain_data_reads_beir(tiny_beir):
    data = DomainData(tiny_beir.load())
    assert data.corpus.count == 4
    assert data.queries == tiny_beir.queries
    labels = data.labels("test")
    assert labels.qrels == TINY_QRELS and labels.queries == tiny_beir.queries and labels.dropped == {}
    assert labels.num_pairs == 2
    hashes = data.file_hashes()
    assert set(hashes) == {str(tiny_beir.root / p) for p in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv")}
    with pytest.raises(DataError, match="no labels named 'dev'"):
        data.labels("dev")


def test_unknown_document_strict_names_file_and_line(tiny_beir):
    write_qrels(tiny_beir.qrels_path("test"), {"q1": {"d1": 1}, "q2": {"d9": 1}})
    with pytest.raises(DataError, match=r"test\.tsv:3: 1 label\(s\) point at unknown document ids.*'d9'"):
        DomainData(tiny_beir.load()).labels("test")


def test_unknown_query_strict(tiny_beir):
    write_qrels(tiny_beir.qrels_path("test"), {"q1": {"d1": 1}, "q7": {"d2": 1}})
    with pytest.raises(DataError, match=r"test\.tsv:3: 1 label\(s\) point at unknown query ids.*q7"):
        DomainData(tiny_beir.load()).labels("test")


def test_unknown_ids_skip_mode_drops_and_counts(tiny_beir, caplog):
    write_qrels(tiny_beir.qrels_path("test"),
                {"q1": {"d1": 1, "d8": 1}, "q2": {"d9": 1}, "q7": {"d2": 1}})
    mapping = yaml.safe_load(tiny_beir.spec_path.read_text())
    mapping["data"]["on_bad_labels"] = "skip"
    tiny_beir.spec_path.write_text(yaml.safe_dump(mapping))
    with caplog.at_level(logging.WARNING, logger="vectune"):
        labels = DomainData(tiny_beir.load()).labels("test")
    assert labels.qrels == {"q1": {"d1": 1}}  # q2 lost its only label, q7 is unknown
    assert labels.dropped == {"unknown_query": 1, "unknown_document": 2}
    assert "dropped labels" in caplog.text


def test_queries_errors(tiny_beir):
    path = tiny_beir.root / "queries.jsonl"
    path.write_text('{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "b"}\n')
    with pytest.raises(DataError, match=r"queries\.jsonl:2: duplicate query id 'q1'"):
        DomainData(tiny_beir.load()).queries
    path.write_text('{"_id": "q1", "text": "a"}\n{"_id": "q2", "text": "  "}\n')
    with pytest.raises(DataError, match=r"queries\.jsonl:2: query 'q2' has empty text"):
        DomainData(tiny_beir.load()).queries


def test_jsonl_pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"query": "aspirin heart", "positive": "d1"},
            {"query": "aspirin heart", "positive": "d4"},
            {"query": "vitamin c", "positive": "d2", "query_id": "v1"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    qrels, queries, where = read_pairs(str(path))
    qa = query_id_for("aspirin heart")
    assert qrels == {qa: {"d1": 1, "d4": 1}, "v1": {"d2": 1}}
    assert queries == {qa: "aspirin heart", "v1": "vitamin c"}
    assert where[("v1", "d2")] == 3
    labels = load_labels(LabelSource(path="pairs.jsonl"), str(path), {"d1", "d2", "d4"}, None)
    assert labels.queries[qa] == "aspirin heart" and labels.num_pairs == 3
    path.write_text('{"query": "x", "positive": "d1"}\n{"query": "y"}\n')
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: missing or empty 'positive'"):
        read_pairs(str(path))


def test_parquet_pairs(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"query": ["a", "b"], "positive": ["d1", "d2"]}), path)
    source = LabelSource(path="pairs.parquet")
    assert source.format == "pairs"
    labels = load_labels(source, str(path), {"d1", "d2"}, None)
    assert labels.qrels == {query_id_for("a"): {"d1": 1}, query_id_for("b"): {"d2": 1}}


def test_click_logs(tmp_path):
    path = tmp_path / "clicks.jsonl"
    rows = [{"query": "q", "doc_id": "d3", "clicked": False, "position": 1},
            {"query": "q", "doc_id": "d1", "clicked": True, "position": 2},
            {"query": "q", "doc_id": "d2", "clicked": False, "position": 0},
            {"query": "never clicked", "doc_id": "d4", "clicked": False, "position": 0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    qrels, _, shown, _ = read_clicks(str(path))
    qid = query_id_for("q")
    assert qrels == {qid: {"d1": 1}}
    assert shown == {qid: ["d2", "d3"]}  # by position; queries without a click have no negatives
    path.write_text('{"query": "q", "doc_id": "d1", "clicked": "maybe"}\n')
    with pytest.raises(DataError, match=r"clicks\.jsonl:1: 'clicked' must be true or false"):
        read_clicks(str(path))


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        ({"clicked": 2, "position": 0}, r":1: 'clicked' must be true or false \(or 1/0\), not 2"),
        ({"clicked": True, "position": -5}, r":1: 'position' must be an integer from 0 \(the top\), not -5"),
        ({"clicked": True, "position": 1.5}, r":1: 'position' must be an integer from 0"),
        ({"clicked": True, "position": True}, r":1: 'position' must be an integer from 0"),
        ({"clicked": True, "position": 0, "query": ["a", "list"]}, r":1: field 'query' must be a string, not a list"),
        ({"clicked": True, "position": 0, "doc_id": {"an": "object"}},
         r":1: id field 'doc_id' must be a string or an integer, not an object"),
    ],
)
def test_click_rows_of_the_wrong_type_or_range_are_refused(tmp_path, row, pattern):
    path = tmp_path / "clicks.jsonl"
    path.write_text(json.dumps({"query": "q", "doc_id": "d1", **row}) + "\n")
    with pytest.raises(DataError, match=pattern):
        read_clicks(str(path))


def test_click_position_infinity_is_refused_not_an_overflow(tmp_path):
    path = tmp_path / "clicks.jsonl"
    path.write_text('{"query": "q", "doc_id": "d1", "clicked": true, "position": Infinity}\n')
    with pytest.raises(DataError, match=r"clicks\.jsonl:1: Infinity is not JSON"):
        read_clicks(str(path))


@pytest.mark.parametrize("score", ["inf", "nan", "-inf", "1.5", "1e300"])
def test_qrels_scores_must_be_integer_grades(tmp_path, score):
    path = tmp_path / "q.tsv"
    path.write_text(f"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t{score}\n")
    with pytest.raises(DataError, match=rf"q\.tsv:3: score '{score}' is (not an integer grade|out of range)"):
        read_qrels(str(path))


@pytest.mark.parametrize(
    ("record", "pattern"),
    [
        ({"_id": "d2", "text": ["a", "list"]}, r"c\.jsonl:2: field 'text' must be a string, not a list"),
        ({"_id": "d2", "title": {"an": "object"}, "text": "b"}, r"c\.jsonl:2: field 'title' must be a string, not an object"),
        ({"_id": {"an": "object"}, "text": "b"}, r"c\.jsonl:2: document id field '_id' must be a string or an integer"),
        ({"_id": True, "text": "b"}, r"c\.jsonl:2: document id field '_id' must be a string or an integer, not a boolean"),
        ({"_id": 2.5, "text": "b"}, r"c\.jsonl:2: document id field '_id' must be a string or an integer, not a number"),
    ],
)
def test_corpus_fields_of_the_wrong_json_type_are_refused(tmp_path, record, pattern):
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "d1", "text": "a"}\n' + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=pattern):
        check_corpus(CorpusSource(path="c.jsonl"), str(path))


def test_corpus_ids_may_be_integers(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": 7, "text": "a"}\n{"_id": "8", "text": "b"}\n')
    assert check_corpus(CorpusSource(path="c.jsonl"), str(path)).ids == {"7", "8"}


def test_nan_in_a_jsonl_record_is_refused(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"query": "q", "positive": "d1", "score": NaN}\n')
    with pytest.raises(DataError, match=r"pairs\.jsonl:1: NaN is not JSON"):
        read_pairs(str(path))


def test_query_text_of_the_wrong_type_is_refused(tmp_path):
    from vectune.data.labels import load_queries
    from vectune.spec.data import QuerySource

    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": "q1", "text": {"not": "text"}}\n')
    with pytest.raises(DataError, match=r"queries\.jsonl:1: field 'text' must be a string, not an object"):
        load_queries(QuerySource(path="queries.jsonl"), str(path))


# -- the Ray Dataset read ------------------------------------------------------------------
def _collect(ds) -> dict[str, tuple[str, str]]:
    rows = ds.take_all()
    out = {r["doc_id"]: (r["title"], r["text"]) for r in rows}
    assert len(out) == len(rows)  # no row read twice
    return out


@pytest.mark.ray
def test_ray_corpus_read_returns_every_row(make_slice, tmp_path, ray_local):
    sl = make_slice(tmp_path, n_docs=200, n_queries=20)
    data = DomainData(sl.load())
    expected = {}
    for line in sl.corpus_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        expected[record["_id"]] = (record["title"], doc_text(record["title"], record["text"]))
    ds = data.corpus_dataset(blocks=4)
    assert ds.count() == data.corpus.count == 200
    assert _collect(ds) == expected


@pytest.mark.ray
def test_line_separators_inside_a_document_stay_inside_it(tmp_path, ray_local):
    """U+2028, U+2029 and U+0085 are valid inside a JSON string: the check and the Ray read
    split lines the same way (at \\n only), so the document arrives whole."""
    texts = {"dU": "a\u2028b", "dP": "c\u2029d", "dN": "e\u0085f", "dplain": "g h"}
    lines = [json.dumps({"_id": i, "title": "t", "text": x}, ensure_ascii=False) for i, x in texts.items()]
    (tmp_path / "corpus.jsonl").write_text("\r\n".join(lines) + "\n", encoding="utf-8")
    spec = spec_for(tmp_path, {"corpus": {"path": "corpus.jsonl"}})
    data = DomainData(spec)
    assert data.corpus.count == 4
    assert _collect(data.corpus_dataset(blocks=2)) == {i: ("t", doc_text("t", x)) for i, x in texts.items()}


@pytest.mark.ray
def test_ray_parquet_corpus_read(tmp_path, ray_local):
    ids = [f"p{i}" for i in range(50)]
    titles = [f"title {i}" if i % 3 else None for i in range(50)]
    texts = [f"text number {i}" for i in range(50)]
    write_parquet_corpus(tmp_path / "c.parquet", ids, titles, texts)
    spec = spec_for(tmp_path, {"corpus": {"path": "c.parquet", "id_field": "doc_id", "title_field": "heading",
                                          "text_field": "body"}})
    data = DomainData(spec)
    got = _collect(data.corpus_dataset(blocks=3))
    assert got == {i: (t or "", doc_text(t, x)) for i, t, x in zip(ids, titles, texts)}


@pytest.mark.ray
def test_ray_corpus_blocks_feed_every_actor(make_slice, tmp_path, ray_local):
    """The read layout and actor pool of the evaluate stage give each of two actors half of a
    300-document corpus (one bundle of 300 would go to a single actor)."""
    from collections import Counter

    from ray.data import DataContext

    from vectune.embed.actors import actor_pool
    from vectune.embed.corpus import corpus_batching

    class Who:  # defined here so Ray pickles it by value (workers cannot import test modules)
        def __call__(self, batch: dict) -> dict:
            import os
            import time

            time.sleep(3.0)  # busy, like an encoder: the next batch must go to the other actor
            return {"pid": [os.getpid()] * len(batch["doc_id"])}

    data = DomainData(make_slice(tmp_path, n_docs=300, n_queries=10).load())
    batch, blocks = corpus_batching(data.corpus.count, 1024, 2)
    assert (batch, blocks) == (150, 2)
    ctx = DataContext.get_current()
    before, ctx.wait_for_min_actors_s = ctx.wait_for_min_actors_s, 300  # both actors up before dispatch
    try:
        tagged = data.corpus_dataset(blocks=blocks).map_batches(
            Who, batch_size=batch, compute=actor_pool(2), num_cpus=0.5)
        per_actor = sorted(Counter(r["pid"] for r in tagged.take_all()).values())
    finally:
        ctx.wait_for_min_actors_s = before
    assert per_actor == [150, 150]


def test_corpus_ids_answer_like_a_set_in_file_order_and_exactly():
    """`CorpusInfo.ids` is a `CorpusIds` (sorted 64-bit keys, the ids in chunks), not a set of
    str: it iterates in file order, answers `in` and `isin` by key (no false member for an id
    that is a prefix, a case variant or absent: a stranger matches a key with a chance of
    n / 2**64), and a copy in another process, where string hashes differ, rebuilds its keys
    and answers the same."""
    import pickle
    import subprocess
    import sys

    from vectune.data import CorpusIds

    ids = [f"doc-{i}" for i in range(70_000)] + ["Doc-1", "ü-ñ", "a b"]  # more than one chunk
    held = CorpusIds.of(ids)
    assert len(held) == len(ids) and list(held) == ids
    for member in ("doc-0", "doc-69999", "Doc-1", "ü-ñ", "a b"):
        assert member in held
    for stranger in ("doc-70000", "doc-", "DOC-1", "", "doc-1 ", None, 7):
        assert stranger not in held
    asked = ["doc-5", "nope", "ü-ñ", "doc-5x"]
    assert held.isin(asked).tolist() == [True, False, True, False]
    assert held.isin([]).tolist() == [] and CorpusIds.of([]).isin(["a"]).tolist() == [False]
    assert held.first_duplicate() is None

    blob = pickle.dumps(held)
    probe = ("import pickle, sys; ids = pickle.loads(sys.stdin.buffer.read()); "
             "print(len(ids), 'doc-7' in ids, 'doc-x' in ids, ids.isin(['ü-ñ', 'zz']).tolist())")
    out = subprocess.run([sys.executable, "-c", probe], input=blob, capture_output=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONHASHSEED": "12345"})
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stdout.decode().split() == [str(len(ids)), "True", "False", "[True,", "False]"]


def test_the_validation_pass_keeps_ids_on_disk_and_leaves_no_file_behind(tmp_path, monkeypatch):
    """`check_corpus` keeps a key per id in memory and the ids in an unlinked spill file: no file
    is left in the temp folder, yet the ids iterate in file order (every chunk read back), answer
    membership, and a pickled copy carries them whole."""
    import pickle
    import tempfile

    from vectune.data.corpus import CorpusIds, check_corpus
    from vectune.spec.data import CorpusSource

    spill_dir = tmp_path / "tmp"
    spill_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill_dir))
    n = 2 * CorpusIds._CHUNK + 3
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"_id": f"id-{i:07d}-é", "text": "t"}) + "\n" for i in range(n)))
    info = check_corpus(CorpusSource(path=str(path)), str(path))
    assert list(spill_dir.iterdir()) == []
    assert info.count == n and len(info.ids) == n and info.ids._keys.nbytes == 8 * n
    assert list(info.ids) == [f"id-{i:07d}-é" for i in range(n)]
    assert f"id-{n - 1:07d}-é" in info.ids and "id-0000000" not in info.ids
    assert info.ids.at(CorpusIds._CHUNK + 1) == f"id-{CorpusIds._CHUNK + 1:07d}-é"
    copy = pickle.loads(pickle.dumps(info.ids))
    assert len(copy) == n and list(copy) == list(info.ids)


_CHECK_IN_CHILD = """
import sys
from vectune.data.corpus import check_corpus
from vectune.spec.data import CorpusSource

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

check_corpus(CorpusSource(path=sys.argv[1]), sys.argv[1])  # the imports and lazy setup, once
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS")
info = check_corpus(CorpusSource(path=sys.argv[2]), sys.argv[2])
print(status("VmHWM") - before, info.count)
"""


def test_the_validation_pass_grows_by_a_key_per_document_whatever_the_ids_length(tmp_path):
    """The driver's validation pass holds 8 bytes a document (a key), not the ids: from 50,000 to
    400,000 documents with 40-character ids its peak grows by far less than the ids' own size
    (the pass before held each id, its key, position and line number: ~80 bytes a document
    here). Measured in a fresh process: a heap the test process already grew hides growth."""
    import subprocess
    import sys

    paths = {}
    for n in (1_000, 50_000, 400_000):
        paths[n] = tmp_path / f"c{n}.jsonl"
        with open(paths[n], "w") as fh:
            fh.writelines(json.dumps({"_id": f"{i:040d}", "text": "a short text"}) + "\n" for i in range(n))
    grew = {}
    for n in (50_000, 400_000):
        out = subprocess.run([sys.executable, "-c", _CHECK_IN_CHILD, str(paths[1_000]), str(paths[n])],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        peak, count = map(int, out.stdout.split())
        assert count == n
        grew[n] = peak
    per_doc = (grew[400_000] - grew[50_000]) / 350_000
    assert per_doc < 24, f"the validation pass grew by {per_doc:.0f} bytes a document"


def test_a_repeated_corpus_id_is_reported_at_its_first_repetition_whatever_the_chunking(tmp_path):
    """The duplicate check runs on the sorted keys once the pass ends: the line named is the
    first line that repeats an earlier id, even when the repeats sit in different chunks."""
    from vectune.data.corpus import CorpusIds, check_corpus
    from vectune.spec.data import CorpusSource

    n = CorpusIds._CHUNK + 10
    lines = [json.dumps({"_id": f"d{i}", "text": "t"}) for i in range(n)]
    lines.insert(n - 3, json.dumps({"_id": "d2", "text": "again"}))  # a later chunk repeats d2
    lines.insert(n - 1, json.dumps({"_id": "d9", "text": "again"}))
    lines.insert(40, json.dumps({"_id": f"d{n - 5}", "text": "early"}))  # repeated later by the original
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n")
    # the first line that repeats an id seen above it: d2 at line n - 2 (1-based, after the insert at 40)
    # comes before the original d{n-5}, which repeats line 41's copy further down
    expected = min(n - 3 + 1 + 1, n - 5 + 1 + 1)
    with pytest.raises(DataError, match=rf"c\.jsonl:{expected}: duplicate document id"):
        check_corpus(CorpusSource(path=str(path)), str(path))
