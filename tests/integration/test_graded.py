"""A domain shaped unlike SciFact: many graded positives per query, the weaker of which
score below most unrelated documents (as in medical or support data, where loosely
related documents are labelled relevant too).

The slice is cut from SciFact: each training query keeps its real relevant documents as
grade 2 and gets 10 other documents as grade 1, drawn from ranks 60-169 of its ranking
under the base model (the ranking the mine itself computes, from the same cached vectors).
With `range_max` 40 the mine looks 40 + P (about 51) ranks deep, so every candidate it
sees ranks above a grade-1 positive and the relative margin drops it: every grade-1 row's
window comes out empty, and under the weakest-positive rule (`reference: weakest`) whole
queries do, the failure issue 29 reports on a medical domain. The fallback must then find
negatives further down, among ranks whose labelled positives it counts.
Real Ray, the real model, real files.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from testdata import write_qrels
from vectune.data import DomainData
from vectune.mine import TRIPLES, mine, normalise, preflight
from vectune.runs import Run
from vectune.spec import load_spec

pytestmark = pytest.mark.ray

GRADE1 = 10  # weakly relevant documents per query
WEAK = (60, 170)  # the ranks they are drawn from
RANGE_MAX = 40
MARGIN = 0.05
BAND = 100  # mine.fallback.band's default
OFF = {"fallback.enabled": False}


@dataclass
class Graded:
    sl: object
    qrels: dict[str, dict[str, int]]
    ranking: dict[str, list[str]]  # each training query's whole corpus, best first, as the mine ranks it
    texts: dict[str, str]  # normalised document texts

    def band_estimate(self, q: str, rank: int) -> float:
        """The documented estimate for the band holding `rank`, recomputed from the ranking
        and the labels (label_recall 0.5: labelled positives per other document)."""
        band = self.ranking[q][rank // BAND * BAND : rank // BAND * BAND + BAND]
        positive_texts = {self.texts[d] for d in self.qrels[q]}
        labelled = sum(d in self.qrels[q] or self.texts[d] in positive_texts for d in band)
        return min(1.0, labelled / (len(band) - labelled)) if len(band) > labelled else 1.0


def _rankings(spec_path, qids: list[str], queries: dict[str, str], corpus_path) -> tuple[dict, dict]:
    """The whole corpus ranked for each query as the mine ranks it: the vectors through the
    embedding cache the mine then reads, each pair scored alone, ties broken by id."""
    from vectune.data.corpus import doc_text
    from vectune.embed import encode_texts, encoder_config, resolve_model
    from vectune.mine.candidates import pair_scores
    from vectune.precision import resolved

    spec = resolved(load_spec(spec_path))
    model = resolve_model(spec.model.base, spec.base_dir)
    docs = [json.loads(x) for x in corpus_path.read_text(encoding="utf-8").splitlines()]
    ids = [d["_id"] for d in docs]
    texts = [doc_text(d.get("title"), d.get("text")) for d in docs]
    vectors = encode_texts(texts, encoder_config(spec, model, role="document"))
    qvecs = encode_texts([queries[q] for q in qids], encoder_config(spec, model, role="query"))
    ranking = {}
    for q, v in zip(qids, qvecs):
        s = pair_scores(v, vectors)
        ranking[q] = [ids[i] for i in sorted(range(len(ids)), key=lambda i: (-s[i], ids[i]))]
    return ranking, {d: normalise(t) for d, t in zip(ids, texts)}


@pytest.fixture(scope="module")
def graded(tmp_path_factory, make_slice) -> Graded:
    root = tmp_path_factory.mktemp("graded")
    sl = make_slice(root, n_docs=220, split=("train", "test"), n_queries=40, seed=5,
                    spec={"model": {"max_seq_length": 64},
                          "mine": {"num_negatives": 2, "range_max": RANGE_MAX, "relative_margin": MARGIN,
                                   "batch_size": 128, "max_pairs": None},
                          "train": {"workers": 1, "cpus_per_worker": 1.5, "batch_size": 16, "epochs": 1,
                                    "max_steps": 4, "negatives": 2, "max_failures": 0,
                                    "validation_queries": 8, "validation_docs": 120, "patience": None,
                                    "interpolation": [0.0, 0.5, 1.0]}})
    qids = sorted(sl.qrels["train"])
    ranking, texts = _rankings(sl.spec_path, qids, sl.queries, sl.corpus_path)
    rng = random.Random(7)
    qrels = {q: {d: 2 for d in docs} for q, docs in sl.qrels["train"].items()}
    for q in qids:
        pool = [d for d in ranking[q][WEAK[0] : WEAK[1]] if d not in qrels[q]]
        for d in rng.sample(pool, GRADE1):
            qrels[q][d] = 1
    write_qrels(sl.qrels_path("train"), qrels)
    return Graded(sl, qrels, ranking, texts)


class Mined:
    def __init__(self, spec, run, audit):
        self.spec, self.run, self.audit = spec, run, audit
        self.rows = {(r["query_id"], r["positive_id"]): r for r in pq.read_table(run.path(*TRIPLES)).to_pylist()}


@pytest.fixture(scope="module")
def mined(ray_local, graded):
    """`mined(name, **mine overrides)`: one mine run per name for the module (the embedding
    cache the fixture filled serves them all)."""
    done: dict[str, Mined] = {}

    def get(name: str, **overrides) -> Mined:
        if name not in done:
            spec = load_spec(graded.sl.spec_path, overrides={f"mine.{k}": v for k, v in overrides.items()})
            run = Run.create(spec, name)
            done[name] = Mined(spec, run, mine(spec, DomainData(spec), run))
        return done[name]

    return get


def test_weakest_positive_starves_mining_but_per_pair_guards_do_not(graded, mined):
    qrels = graded.qrels
    weakest = mined("weakest-off", reference="weakest", **OFF).audit
    pair_run = mined("pair-off", **OFF)
    pair = pair_run.audit
    n = len(qrels)
    assert weakest["queries_mined"] == pair["queries_mined"] == n
    # the failure the issue reports: the weakest positive vetoes almost every candidate
    assert weakest["share_of_queries_with_negatives"] < 0.3, weakest["share_of_queries_with_negatives"]
    assert weakest["emptied_by"]["queries"].get("relative_margin", 0) >= 0.7 * n
    # per pair: the strong positives' rows get negatives for most queries
    assert pair["share_of_queries_with_negatives"] >= 0.8, pair["share_of_queries_with_negatives"]
    assert pair["judged_per"] == "pair" and pair["reference"] == "pair"
    rows = list(pair_run.rows.values())
    assert len(rows) == sum(len(d) for d in qrels.values())
    for r in rows:  # a row's negatives score below its own positive by the margin, and are never labelled
        limit = r["positive_score"] - abs(r["positive_score"]) * MARGIN
        assert all(s <= limit + 1e-6 for s in r["negative_scores"]), r
        assert not set(r["negative_ids"]) & set(qrels[r["query_id"]])
        assert r["grade"] == qrels[r["query_id"]][r["positive_id"]]
    strong = [r for r in rows if r["grade"] == 2]
    assert sum(bool(r["negative_ids"]) for r in strong) >= 0.8 * len(strong)
    assert pair["grades"]["mined"] == {"1": GRADE1 * n, "2": len(strong)}
    # every grade-1 positive ranks below the whole window, so the margin empties its row
    assert all(not r["negative_ids"] for r in rows if r["grade"] == 1)
    assert pair["fallback"]["windows_emptied"]["rows"] >= GRADE1 * n
    assert pair["fallback"]["rows_with_fallback_negatives"] == 0


def test_preflight_names_the_guard_that_starved_mining(mined):
    weakest = mined("weakest-off", reference="weakest", **OFF).audit
    verdict = preflight(weakest)
    assert verdict["low"] and verdict["guard"] == "relative_margin"
    assert "relative_margin emptied" in verdict["message"] and "mine.relative_margin" in verdict["message"]
    assert f"of {weakest['candidates']:,} candidates" in verdict["message"]
    assert "mine.fallback.enabled: true" in verdict["message"]


def _check_fallback_negatives(graded: Graded, run: Mined, cap: float) -> list[float]:
    """Every fallback negative: not a labelled positive of its query, not a copy of one's
    text, below its row's positive by the margin, at the rank the row says and beyond the
    window's depth, from a band whose estimate (recomputed here) is within `cap`.
    Returns those estimates."""
    estimates = []
    for (q, _), r in run.rows.items():
        n = r["fallback_negatives"]
        assert n <= len(r["negative_ids"]) == len(r["negative_ranks"])
        if not n:
            continue
        depth = RANGE_MAX + len(graded.qrels[q])
        positive_texts = {graded.texts[d] for d in graded.qrels[q]}
        limit = r["positive_score"] - abs(r["positive_score"]) * MARGIN
        for d, rank, score in zip(r["negative_ids"][-n:], r["negative_ranks"][-n:], r["negative_scores"][-n:]):
            assert d not in graded.qrels[q] and graded.texts[d] not in positive_texts, (q, d)
            assert score <= limit + 1e-6, (q, d, score, limit)
            assert graded.ranking[q][rank] == d and rank >= depth, (q, d, rank)
            estimates.append(graded.band_estimate(q, rank))
            assert estimates[-1] <= cap, (q, d, rank, estimates[-1])
    return estimates


def test_every_row_the_margin_empties_gets_fallback_negatives(graded, mined):
    off, on = mined("pair-off", **OFF), mined("pair")
    emptied = {k for k, r in off.rows.items() if not r["negative_ids"]}
    assert {k for k, r in off.rows.items() if r["grade"] == 1} <= emptied
    for k, r in on.rows.items():
        if k in emptied:  # each row the margin emptied gets a full set of fallback negatives
            assert r["fallback_negatives"] == len(r["negative_ids"]) == 2, k
        else:  # and no other row changes
            assert r["fallback_negatives"] == 0
            assert (r["negative_ids"], r["negative_ranks"]) == (off.rows[k]["negative_ids"],
                                                                off.rows[k]["negative_ranks"])
    estimates = _check_fallback_negatives(graded, on, cap=0.1)
    fb = on.audit["fallback"]
    assert fb["enabled"] and fb["max_false_negative_rate"] == 0.1 and fb["band"] == BAND
    assert fb["windows_emptied"]["rows"] == len(emptied) == fb["rows_with_fallback_negatives"]
    assert fb["negatives"] == len(estimates) == 2 * len(emptied)
    assert fb["rows_refused_by_cap"] == fb["rows_nothing_found"] == 0
    # the reported rate is the mean of the estimates recomputed from the labels and ranking
    assert fb["false_negative_rate"]["fallback"] == pytest.approx(np.mean(estimates), abs=1e-6)
    assert fb["false_negative_rate"]["fallback_max"] == pytest.approx(max(estimates), abs=1e-6)
    assert 0 < fb["false_negative_rate"]["fallback"] <= 0.1  # grade-1 positives share those ranks
    assert fb["false_negative_rate"]["ordinary"] is not None
    assert on.audit["checks"] == {"negatives_equal_to_positive": 0, "negatives_labelled_positive": 0,
                                  "fallback_negatives_above_cap": 0}
    assert on.audit["rows_without_negatives"] == 0 and on.audit["emptied_by"]["rows"] == {}
    out = on.audit["output"]
    assert out["rows"] == len(on.rows) and out["negatives_per_row"]["counts"] == {"2": len(on.rows)}
    assert out["negatives"] == {"window": on.audit["negatives_out"] - fb["negatives"], "fallback": fb["negatives"]}
    # positive_rank: each query's positives in the round-robin order, grade 2 before grade 1
    for q, docs in graded.qrels.items():
        ranks = {d: on.rows[(q, d)]["positive_rank"] for d in docs}
        assert sorted(ranks.values()) == list(range(len(docs)))
        assert max(ranks[d] for d in docs if docs[d] == 2) < min(ranks[d] for d in docs if docs[d] == 1)


def test_queries_the_margin_empties_whole_get_fallback_negatives(graded, mined):
    """Under the weakest-positive rule the margin takes every candidate of most queries (the
    medical domain's 685 of 1,000); with the fallback each of them still trains on hard negatives."""
    off, on = mined("weakest-off", reference="weakest", **OFF), mined("weakest", reference="weakest")
    by_query = {}
    for (q, _), r in off.rows.items():
        by_query.setdefault(q, []).append(bool(r["negative_ids"]))
    starved = {q for q, has in by_query.items() if not any(has)}
    assert len(starved) >= 0.7 * len(graded.qrels)
    for (q, _), r in on.rows.items():
        if q in starved:
            assert r["fallback_negatives"] == len(r["negative_ids"]) == 2, q
    _check_fallback_negatives(graded, on, cap=0.1)
    a = on.audit
    fb = a["fallback"]
    assert fb["queries_with_fallback_negatives"] == len(starved) == fb["windows_emptied"]["queries"]
    assert a["share_of_queries_with_negatives"] == 1.0
    verdict = preflight(a)
    assert not verdict["low"] and verdict["queries_from_fallback"] == len(starved)
    assert f"{len(starved)} of them from the fallback" in verdict["message"]


def test_hybrid_candidates_on_graded_labels_still_guard_every_positive_and_fall_back(graded, mined):
    """The hybrid mine (dense and BM25 fused) on many graded positives per query, under the rule
    that empties most queries' windows: no labelled positive of any grade (nor a copy of its
    text) becomes a negative, candidates only BM25 found take part, and every row still gets
    its negatives, the fallback's from the dense ranking under the same audit and cap."""
    off, on = mined("weakest-hybrid-off", reference="weakest", search="hybrid", **OFF), \
        mined("weakest-hybrid", reference="weakest", search="hybrid")
    assert on.audit["ranking"]["source"] == "hybrid" and on.audit["ranking"]["from_bm25_only"] > 0
    starved = {q for q in graded.qrels if not any(r["negative_ids"] for (k, _), r in off.rows.items() if k == q)}
    assert starved  # the margin empties queries here too
    for (q, _), r in on.rows.items():
        positive_texts = {graded.texts[d] for d in graded.qrels[q]}
        assert not set(r["negative_ids"]) & set(graded.qrels[q])
        assert not {graded.texts[d] for d in r["negative_ids"]} & positive_texts
        if q in starved:
            assert r["fallback_negatives"] == len(r["negative_ids"]) == 2, q
    _check_fallback_negatives(graded, on, cap=0.1)
    assert on.audit["share_of_queries_with_negatives"] == 1.0
    assert on.audit["checks"]["negatives_labelled_positive"] == 0


def test_the_cap_refuses_bands_above_it_and_the_walk_goes_deeper(graded, mined):
    cap = 0.03
    default, capped = mined("pair"), mined("pair-cap", **{"fallback.max_false_negative_rate": cap})
    _check_fallback_negatives(graded, capped, cap=cap)
    fb = capped.audit["fallback"]
    assert fb["max_false_negative_rate"] == cap and fb["false_negative_rate"]["fallback_max"] <= cap
    assert fb["bands"]["refused"] > 0 and fb["bands"]["refused_estimate"]["min"] > cap
    moved = 0
    for k, r in default.rows.items():
        n = r["fallback_negatives"]
        if not n:
            continue
        over = [rank for rank in r["negative_ranks"] if graded.band_estimate(k[0], rank) > cap]
        got = capped.rows[k]
        if over:  # a band the default took from is refused now: deeper negatives, or none and said so
            moved += 1
            assert all(rank // BAND > max(over) // BAND for rank in got["negative_ranks"]) or not got["negative_ids"]
        else:  # nothing above the cap: the same negatives
            assert got["negative_ids"] == r["negative_ids"]
    assert moved > 0
    left = sum(not r["negative_ids"] for r in capped.rows.values())
    assert fb["rows_refused_by_cap"] + fb["rows_nothing_found"] == left
    assert capped.audit["emptied_by"]["rows"].get("fallback_cap", 0) == fb["rows_refused_by_cap"]


def test_the_row_budget_says_how_it_was_spent(graded, mined):
    """60 rows for 40 queries: one positive each (the grade-2 ones first), a second for 20."""
    run = mined("budget", max_pairs=60)
    rows = list(run.rows.values())
    assert len(rows) == 60
    per_query = {}
    for r in rows:
        per_query.setdefault(r["query_id"], []).append(r["positive_rank"])
    assert len(per_query) == 40 and all(sorted(v) == list(range(len(v))) for v in per_query.values())
    assert all(r["grade"] == 2 for r in rows if r["positive_rank"] == 0)
    b = run.audit["budget"]
    labelled = sum(len(d) for d in graded.qrels.values())
    assert b["capped"] and b["cap"] == 60 and b["max_pairs"] == 60
    assert b["labelled"]["pairs"] == labelled and b["labelled"]["queries"] == 40
    assert b["spent"]["queries"] == 40 and b["spent"]["pairs"] == 60
    assert b["spent"]["positives_per_query"]["counts"] == {"1": 20, "2": 20}
    assert b["rows_by_positive_rank"] == {"0": 40, "1": 20}
    out = run.audit["output"]
    n_neg = [len(r["negative_ids"]) for r in rows]
    assert out["rows"] == 60 and out["queries"] == 40
    assert out["negatives_per_row"]["counts"] == {str(k): n_neg.count(k) for k in sorted(set(n_neg))}
    assert out["rows_with_fallback_negatives"] == sum(r["fallback_negatives"] > 0 for r in rows)


def test_min_relevance_trains_on_high_grades_and_still_guards_the_rest(ray_local, graded):
    sl, qrels = graded.sl, graded.qrels
    mapping = yaml.safe_load(sl.spec_path.read_text())
    mapping["data"]["train"]["min_relevance"] = 2
    path = sl.root / "grade2.yaml"
    path.write_text(yaml.safe_dump(mapping))
    spec = load_spec(path)
    run = Run.create(spec, "grade2")
    audit = mine(spec, DomainData(spec), run)
    rows = pq.read_table(run.path(*TRIPLES)).to_pylist()
    assert {r["grade"] for r in rows} == {2}
    assert audit["grades"]["related_below_min_relevance"] == GRADE1 * len(qrels)
    for r in rows:  # grade-1 documents are not positives here, and never negatives either
        assert not set(r["negative_ids"]) & set(qrels[r["query_id"]])


# CI time (~40 s: a Ray Train run): the default tier trains through Ray Train with validation curves, the
# base scored at step 0 and the mixing weight chosen (test_train_select.py), and keeps each query once
# per batch over datasets of 1 and 0 hard negatives in the workers' own trainer (the test below)
@pytest.mark.slow
def test_rows_without_hard_negatives_still_train_and_batches_never_repeat_a_query(graded, mined):
    """Mined under the weakest-positive rule (fallback off) most rows have no hard negatives: training goes on
    with in-batch negatives (one dataset per negative count), validation picks the checkpoint
    and the mixing weight, and the no-duplicates sampler keeps each query once per batch."""
    from vectune import pipeline

    qrels = graded.qrels
    starved = mined("weakest-off", reference="weakest", **OFF)
    spec, run, audit = starved.spec, starved.run, starved.audit
    assert audit["rows_without_negatives"] > audit["triples_out"] / 2
    summary = pipeline.train(spec, run_id=run.id)["train"]  # pre-flight, then the train stage
    run = Run.open(spec, run.id)
    assert summary["steps"] == 4 and summary["dimension"] == 384
    assert summary["rows_without_negatives"] > 0 and "0" in summary["rows_by_negatives"]
    assert summary["rows"] + summary["rows_short_of_negatives"] + sum(
        len(qrels[q]) for q in _held(run)) == audit["triples_out"]
    assert summary["preflight"]["low"] and summary["preflight"]["guard"] == "relative_margin"
    mix = json.loads(run.path("train", "interpolation.json").read_text())
    assert [c["weight"] for c in mix["curve"]] == [0.0, 0.5, 1.0]
    assert mix["weight"] == max(mix["curve"], key=lambda c: (c["ndcg@10"], c["weight"]))["weight"]
    assert summary["checkpoint"]["validation"]["ndcg@10"] is not None
    history = [json.loads(x) for x in run.path("train", "loss.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    checkpoints = [json.loads(x) for x in run.path("train", "validation.jsonl").read_text().splitlines()]
    # the starting model is scored first (step 0), then every checkpoint
    assert [c["step"] for c in checkpoints] == [0, 1, 2, 3, 4] and all("ndcg@10" in c for c in checkpoints)
    assert summary["checkpoint"]["validation"]["ndcg@10"] == max(c["ndcg@10"] for c in checkpoints)
    # the run report shows both curves and the weight the gate will judge
    from vectune.report import render_report

    page = render_report(run.dir)
    assert "validation on held-out training queries" in page
    assert f"kept weight {mix['weight']}" in page
    for c in mix["curve"]:
        assert f"<tr><th>{c['weight']}</th>" in page


def _held(run: Run) -> set[str]:
    """The validation queries the stage held out (read back from its saved plan)."""
    return set(json.loads(run.path("train", "plan.json").read_text())["held"])


def test_no_batch_holds_one_query_twice(tmp_path):
    """The batches of the very trainer the workers run (built here in-process, no Ray):
    12 queries with 6 positives each, batch 8, in two datasets (1 and 0 hard negatives)."""
    import pyarrow as pa
    import torch

    from vectune.embed import resolve_model
    from vectune.spec.train import MNRLoss
    from vectune.train.loop import LoopConfig, build_trainer, datasets_from_table

    rows = [{"query": f"query {q}", "positive": f"doc {q}-{p}", "negatives": [f"neg {q}-{p}"] if p % 2 else [],
             "group": 1 if p % 2 else 0} for q in range(12) for p in range(6)]
    datasets = datasets_from_table(pa.Table.from_pylist(rows), (1, 0))
    base = resolve_model("all-MiniLM-L6-v2")
    config = LoopConfig(model_path=base, base_model_path=base, loss=MNRLoss(), groups=(1, 0), micro_batch=8,
                        accumulation=1, total_steps=6, warmup_steps=0, checkpoint_every=6, learning_rate=1e-5,
                        weight_decay=0.0, precision="fp32", max_seq_length=32, seed=3, threads=1)
    trainer = build_trainer(config, datasets, rank=0, world=1, device=torch.device("cpu"), work=str(tmp_path))
    names = list(datasets)
    starts = [sum(len(datasets[n]) for n in names[:i]) for i in range(len(names))]
    batches = list(trainer.get_train_dataloader().batch_sampler)
    assert len(batches) >= 6
    for batch in batches:
        where = [max(i for i, s in enumerate(starts) if s <= idx) for idx in batch]
        assert len(set(where)) == 1  # one dataset (one row width) per batch
        ds = datasets[names[where[0]]]
        queries = [ds[idx - starts[where[0]]]["anchor"] for idx in batch]
        assert len(queries) == 8 and len(set(queries)) == 8, queries


# CI time (69 s: two trainings): the default tier keeps settings chosen on validation
# (test_train_select.py) and how a setting spends the row budget (tests/unit/test_train_plan.py)
@pytest.mark.slow
def test_validation_decides_between_more_queries_and_more_positives_per_query(graded, mined):
    """`train.positives_per_query: [1, 2]` on a budget of 16 rows (2 steps of 8): one setting
    trains 16 queries with one positive each, the other 8 queries with two; each is scored on the
    validation queries at the same step and the better one is kept; each says what it trained."""
    import shutil

    from vectune.runs import base_model_path
    from vectune.train import train

    src = mined("weakest-off", reference="weakest", **OFF)
    spec = src.spec.derived(train=src.spec.train.model_copy(update={
        "positives_per_query": [1, 2], "batch_size": 8, "max_steps": 2, "checkpoint_every": 2,
        "interpolation": [1.0]}))
    run = Run.create(spec, "per-query")
    shutil.copytree(src.run.path("mine"), run.path("mine"))
    run.manifest["stages"]["mine"] = src.run.manifest["stages"]["mine"]
    run.save()
    summary = train(spec, run, base_model_path(spec))
    saved = json.loads(run.path("train", "settings.json").read_text())
    assert [s["positives_per_query"] for s in saved["settings"]] == [1, 2]
    wide, deep = (s["trained"] for s in saved["settings"])
    assert wide["rows"] == 16 and wide["positives_per_query"]["distribution"] == {"1": 16}
    assert deep["rows"] == 16 and deep["positives_per_query"]["distribution"] == {"2": 8}
    # the same steps, checkpoints at the same steps: the kept setting is the better one there
    assert all([c["step"] for c in s["curve"]] == [2] for s in saved["settings"])
    best = max(saved["settings"], key=lambda s: max(c["ndcg@10"] for c in s["curve"]))
    assert summary["positives_per_query"] == best["positives_per_query"] == saved["chosen"]["positives_per_query"]
    assert summary["trained"] == best["trained"]
