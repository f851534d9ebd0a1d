"""Metrics through pytrec_eval, on hand-made qrels and runs whose answers are worked out here."""

from __future__ import annotations

import math

import pytest

from vectune.evaluate import score_run


def ranked(*docs: str) -> dict[str, float]:
    """A run row: the first doc scores highest."""
    return {d: float(len(docs) - i) for i, d in enumerate(docs)}


def test_perfect_ranking_scores_one():
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1}}
    run = {"q1": ranked("a", "b", "x", "y"), "q2": ranked("c", "x")}
    means, per_query = score_run(qrels, run, ["ndcg@10", "recall@100", "mrr@10", "map@100", "precision@1"])
    assert means == pytest.approx({"ndcg@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0, "map@100": 1.0,
                                   "precision@1": 1.0})
    assert set(per_query) == {"q1", "q2"}


def test_single_relevant_at_rank_two():
    qrels = {"q": {"b": 1}}
    means, _ = score_run(qrels, {"q": ranked("a", "b", "c")}, ["mrr@10", "ndcg@10", "recall@1", "recall@2",
                                                              "precision@2"])
    assert means["mrr@10"] == pytest.approx(0.5)
    assert means["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert means["recall@1"] == 0.0 and means["recall@2"] == 1.0
    assert means["precision@2"] == pytest.approx(0.5)


def test_mrr_is_cut_at_k():
    docs = [f"x{i}" for i in range(10)] + ["hit"]  # the relevant doc is 11th
    means, _ = score_run({"q": {"hit": 1}}, {"q": ranked(*docs)}, ["mrr@10", "mrr@20"])
    assert means["mrr@10"] == 0.0
    assert means["mrr@20"] == pytest.approx(1 / 11)


def test_recall_at_k_counts_the_share_found():
    qrels = {"q": {"a": 1, "b": 1, "c": 1, "d": 1}}
    run = {"q": ranked("a", "x", "b", "y", "z", "c")}
    means, _ = score_run(qrels, run, ["recall@1", "recall@3", "recall@10"])
    assert means == pytest.approx({"recall@1": 0.25, "recall@3": 0.5, "recall@10": 0.75})


def test_ndcg_by_hand():
    # relevant at ranks 1 and 3 of two relevant: DCG = 1 + 1/log2(4), IDCG = 1 + 1/log2(3)
    means, _ = score_run({"q": {"a": 1, "b": 1}}, {"q": ranked("a", "x", "b")}, ["ndcg@3", "ndcg@1"])
    assert means["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert means["ndcg@1"] == pytest.approx(1.0)


def test_graded_relevance():
    # grade 2 at rank 2, grade 1 at rank 1: trec_eval gains are the grades themselves
    means, _ = score_run({"q": {"a": 1, "b": 2}}, {"q": ranked("a", "b")}, ["ndcg@10"])
    assert means["ndcg@10"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))


def test_map_by_hand():
    # relevant at ranks 2 and 4 of two: AP = (1/2 + 2/4) / 2
    means, _ = score_run({"q": {"a": 1, "b": 1}}, {"q": ranked("x", "a", "y", "b")}, ["map@100"])
    assert means["map@100"] == pytest.approx(0.5)


def test_a_query_missing_from_the_run_counts_as_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    means, per_query = score_run(qrels, {"q1": ranked("a")}, ["ndcg@10", "mrr@10", "recall@100"])
    assert per_query["q2"] == {"ndcg@10": 0.0, "mrr@10": 0.0, "recall@100": 0.0}
    assert means == pytest.approx({"ndcg@10": 0.5, "mrr@10": 0.5, "recall@100": 0.5})


def test_empty_run_row_and_runs_for_unlabelled_queries():
    qrels = {"q1": {"a": 1}}
    run = {"q1": {}, "stray": ranked("a")}  # a query without labels is not averaged in
    means, per_query = score_run(qrels, run, ["ndcg@10", "mrr@10"])
    assert means == {"ndcg@10": 0.0, "mrr@10": 0.0} and list(per_query) == ["q1"]


def test_per_query_values_average_to_the_means():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    run = {"q1": ranked("a"), "q2": ranked("x", "b"), "q3": ranked("x", "y", "z", "c")}
    means, per_query = score_run(qrels, run, ["mrr@10"])
    assert [per_query[q]["mrr@10"] for q in ("q1", "q2", "q3")] == pytest.approx([1.0, 0.5, 0.25])
    assert means["mrr@10"] == pytest.approx(1.75 / 3)
