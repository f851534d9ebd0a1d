"""The training plan (pure): held-out validation queries, row groups by hard-negative
count, the step budget and the checkpoint schedule."""

from __future__ import annotations

import pytest

from vectune.errors import StageError
from vectune.spec import validate_dict
from vectune.train.plan import plan, validation_docs, validation_set


def _spec(**train):
    return validate_dict({"version": 1, "name": "t", "data": {"corpus": {"path": "c.jsonl"}},
                          "train": {"batch_size": 8, "validation_queries": 0, **train}}, "t")


def _rows(n_queries: int, per_query: int, negatives):
    """Query ids and negative counts: `negatives(i)` for the i-th row."""
    qids = [f"q{q}" for q in range(n_queries) for _ in range(per_query)]
    return qids, [negatives(i) for i in range(len(qids))]


def test_rows_short_of_negatives_train_in_their_own_group():
    qids, counts = _rows(40, 2, lambda i: 3 if i % 2 else 0)
    p = plan(qids, counts, _spec(epochs=1), negatives=1)
    assert p.groups == {1: 40, 0: 40} and p.rows_without_negatives == 40 and p.dropped_short == 0
    assert p.steps_per_epoch == 10 and p.total_steps == 10


def test_require_negatives_drops_short_rows_and_says_why_when_nothing_is_left():
    qids, counts = _rows(40, 2, lambda i: 3 if i % 2 else 0)
    p = plan(qids, counts, _spec(require_negatives=True), negatives=1)
    assert p.groups == {1: 40} and p.dropped_short == 40
    qids, counts = _rows(4, 1, lambda i: 0)
    with pytest.raises(StageError, match="cannot fill one batch of 8.*fewer than 1 hard negatives"):
        plan(qids, counts, _spec(require_negatives=True), negatives=1)
    with pytest.raises(StageError, match="fewer than 1 hard negatives"):  # triplet needs its negative
        plan(qids, counts, _spec(), negatives=1, exact_negatives=True)


def test_small_groups_merge_down_and_a_tiny_last_group_is_left_out():
    # 3 rows with 3 negatives (too few for a batch of 8): they train with 2; 5 rows with none: left out
    counts = [3] * 3 + [2] * 30 + [0] * 5
    qids = [f"q{i}" for i in range(len(counts))]
    p = plan(qids, counts, _spec(), negatives=3)
    assert p.groups == {2: 33} and p.dropped_short == 5
    assert {p.group_of[i] for i in range(3)} == {2} and all(i not in p.group_of for i in range(33, 38))


def test_budget_caps_steps_and_the_schedule_follows_the_run():
    qids, counts = _rows(1000, 10, lambda i: 1)  # 10,000 rows: 1,250 steps an epoch
    p = plan(qids, counts, _spec(epochs=2, max_steps=40, warmup_ratio=0.1), negatives=1)
    assert p.steps_per_epoch == 1250 and p.total_steps == 40 and p.warmup_steps == 4
    assert p.checkpoint_every == 10  # 4 checkpoints over the run by default
    small = plan(*_rows(20, 1, lambda i: 1), _spec(epochs=1, max_steps=100), negatives=1)
    assert small.total_steps == 2 and small.checkpoint_every == 1
    assert plan(qids, counts, _spec(max_steps=40, checkpoint_every=25), negatives=1).checkpoint_every == 25


def test_validation_queries_are_held_out_whole_and_seeded():
    qids, counts = _rows(300, 3, lambda i: 1)
    p = plan(qids, counts, _spec(validation_queries="auto"), negatives=1)
    assert len(p.held) == 30  # 10% of 300
    assert all(qids[i] not in p.held for i in p.group_of) and p.rows == 270 * 3
    assert p.held == plan(qids, counts, _spec(validation_queries="auto"), negatives=1).held
    assert len(plan(*_rows(99, 1, lambda i: 1), _spec(validation_queries="auto"), negatives=1).held) == 0
    with pytest.raises(StageError, match="leaves no training queries"):
        plan(*_rows(5, 1, lambda i: 1), _spec(validation_queries=5), negatives=1)


def test_gradient_accumulation_and_workers_split_the_batch():
    qids, counts = _rows(64, 1, lambda i: 1)
    p = plan(qids, counts, _spec(batch_size=16, workers=2, gradient_accumulation=2), negatives=1)
    assert p.micro_batch == 4 and p.steps_per_epoch == 4
    with pytest.raises(StageError, match="fewer than 2 rows per worker"):
        plan(qids, counts, _spec(batch_size=8, workers=2, gradient_accumulation=4), negatives=1)


def test_validation_ranks_the_whole_corpus_up_to_its_size():
    corpus = {f"d{i}" for i in range(50)}
    ids, sampled = validation_docs(corpus, {"d3"}, size=50, seed=1)
    assert ids == sorted(corpus) and not sampled


def test_above_its_size_validation_samples_the_corpus_keeping_every_labelled_document():
    corpus = {f"d{i}" for i in range(1000)}
    labelled = {"d1", "d500", "d999"}
    ids, sampled = validation_docs(corpus, labelled, size=100, seed=1)
    assert sampled and len(ids) == 100 and labelled <= set(ids) and set(ids) <= corpus
    assert validation_docs(corpus, labelled, size=100, seed=1) == (ids, True)  # seeded
    other, _ = validation_docs(corpus, labelled, size=100, seed=2)
    assert other != ids and labelled <= set(other)
    # the sample is drawn from the whole corpus, not one end of it
    numbers = sorted(int(d[1:]) for d in set(ids) - labelled)
    assert numbers[0] < 200 and numbers[-1] > 800
    # labelled documents alone above the size: all of them, nothing else
    many = {f"d{i}" for i in range(0, 1000, 5)}
    ids, sampled = validation_docs(corpus, many, size=100, seed=1)
    assert set(ids) == many and sampled


def test_validation_set_counts_every_labelled_document_of_the_corpus_it_ranks():
    texts = {"a": "A", "b": "B", "c": "C"}
    queries = {"q0": "query 0", "q1": "query 1"}
    qrels = {"q0": {"a": 1, "b": 2, "z": 1}, "q1": {"b": 2}}
    vs = validation_set({"q0"}, queries, qrels, texts, prompts=("query: ", "passage: "))
    assert vs["queries"] == {"q0": "query: query 0"}
    assert vs["qrels"] == {"q0": {"a": 1, "b": 2}}  # z is not among the documents ranked
    assert vs["corpus"] == {"a": "passage: A", "b": "passage: B", "c": "passage: C"}
    assert validation_set(set(), queries, qrels, texts) is None


def test_a_group_needs_as_many_distinct_queries_as_a_batch():
    """60 rows of 3 queries: a batch of 8 never holds one query twice, so not one step fits."""
    qids, counts = _rows(3, 20, lambda i: 1)
    with pytest.raises(StageError, match="cannot fill one batch of 8"):
        plan(qids, counts, _spec(), negatives=1)
    qids, counts = _rows(8, 20, lambda i: 1)  # 160 rows of 8 queries: 20 batches, each query once in each
    assert plan(qids, counts, _spec(epochs=1), negatives=1).steps_per_epoch == 20


# -- train.positives_per_query: how a row budget is spent -----------------------------------
def _labels(n_queries: int, positives: int):
    from vectune.data.labels import Labels

    qrels = {f"q{q}": {f"d{q}-{j}": 1 for j in range(positives)} for q in range(n_queries)}
    return Labels(qrels=qrels, queries={q: f"text {q}" for q in qrels})


def test_the_mine_plan_mines_what_every_positives_per_query_setting_spends():
    from vectune.mine.budget import plan_pairs

    # 200 queries x 10 positives, a cap of 100 pairs: one setting spends it on 100 queries x 1,
    # the other on 25 queries x 4; the mine takes both
    one = validate_dict({"version": 1, "name": "t", "data": {"corpus": {"path": "c.jsonl"}},
                         "mine": {"max_pairs": 100}, "train": {"positives_per_query": [1]}}, "t")
    both = validate_dict({"version": 1, "name": "t", "data": {"corpus": {"path": "c.jsonl"}},
                          "mine": {"max_pairs": 100}, "train": {"positives_per_query": [1, 4]}}, "t")
    labels = _labels(200, 10)
    p1, p2 = plan_pairs(one, labels), plan_pairs(both, labels)
    from collections import Counter

    per1 = Counter(q for q, _ in p1.pairs)
    assert len(p1.pairs) == 100 and set(per1.values()) == {1}
    per2 = Counter(q for q, _ in p2.pairs)
    assert set(p1.pairs) <= set(p2.pairs) and sum(n == 4 for n in per2.values()) == 25
    assert len(p2.pairs) == 100 + 25 * 3  # the 25 deep queries' first positive is among the 100 or not
    assert all(p2.positive_rank[pair] < 4 for pair in p2.pairs)


def test_a_positives_per_query_setting_takes_whole_queries_up_to_the_budget():
    from vectune.train.plan import rows_per_query

    # 30 queries; q0..q9 have 4 positives mined, the rest 1 (no validation queries held out)
    qids, ranks = [], []
    for q in range(30):
        for r in range(4 if q < 10 else 1):
            qids.append(f"q{q}")
            ranks.append(r)
    p = plan(qids, [1] * len(qids), _spec(epochs=1), negatives=1)
    deep = rows_per_query(qids, ranks, p, per_query=4, budget=20, seed=1)
    assert len(deep) == 20 and len({qids[i] for i in deep}) == 5  # whole queries, 4 rows each
    wide = rows_per_query(qids, ranks, p, per_query=1, budget=20, seed=1)
    assert len(wide) == 20 and len({qids[i] for i in wide}) == 20  # 20 queries, one positive each
    assert all(ranks[i] == 0 for i in wide)
    # a batch never holds one query twice: 5 queries fill batches of 4, not of 8
    sub = plan(qids, [1] * len(qids), _spec(epochs=1, batch_size=4), negatives=1, only=deep)
    assert sub.rows == 20 and set(sub.group_of) == deep
    with pytest.raises(StageError, match="cannot fill one batch of 8"):
        plan(qids, [1] * len(qids), _spec(epochs=1), negatives=1, only=deep)
