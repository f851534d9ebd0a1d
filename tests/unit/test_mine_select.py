"""The negative choice for one query: each guard, the rank window, sampling, click logs."""

from __future__ import annotations

import numpy as np
import pytest

from vectune.mine.audit import describe, histogram
from vectune.mine.select import QueryCandidates, choose, normalise, text_key
from vectune.spec.mine import MineSpec


def spec(**kw) -> MineSpec:
    base = dict(num_negatives=3, range_min=0, range_max=10, relative_margin=None)
    return MineSpec(**{**base, **kw})


def cands(scores, *, positives=(("p", 0.8),), shown=(), dup_of=None) -> QueryCandidates:
    """Candidates d0, d1, ... with the given scores (best first); `dup_of` names ids whose
    text equals the first positive's."""
    ids = [f"d{i}" for i in range(len(scores))]
    keys = {d: text_key(f"text of {d}") for d in ids + [s for s, _ in shown]}
    pos_ids = [p for p, _ in positives]
    pos_keys = [text_key(f"text of {p}") for p in pos_ids]
    for d in dup_of or ():
        keys[d] = pos_keys[0]
    return QueryCandidates(
        query_id="q1", positive_ids=pos_ids, positive_keys=pos_keys,
        positive_scores=np.asarray([s for _, s in positives], dtype=np.float32),
        ids=ids, scores=np.asarray(scores, dtype=np.float32), keys=[keys[d] for d in ids],
        shown_ids=[s for s, _ in shown], shown_scores=np.asarray([v for _, v in shown], dtype=np.float32),
        shown_keys=[keys[s] for s, _ in shown],
    )


SCORES = [0.9, 0.79, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]


def test_top_takes_the_best_survivors_in_order():
    c = choose(spec(), cands(SCORES))
    assert c.ids == ["d0", "d1", "d2"]
    assert c.scores == pytest.approx([0.9, 0.79, 0.75])


def test_labelled_positive_is_never_a_negative():
    c = cands(SCORES)
    c.ids[1] = "p"
    out = choose(spec(), c)
    assert "p" not in out.ids and out.dropped["labelled_positive"] == 1
    assert out.ids == ["d0", "d2", "d3"]


def test_duplicate_text_of_a_positive_is_dropped_and_listed():
    out = choose(spec(), cands(SCORES, dup_of=["d0", "d4"]))
    assert out.ids == ["d1", "d2", "d3"]
    assert out.dropped["duplicate_of_positive"] == 2 and out.duplicates == ["d0", "d4"]


def test_normalise_lowercases_and_collapses_whitespace():
    assert normalise("  The  Cat\n\tSat ") == "the cat sat"
    assert text_key("The  CAT sat") == text_key("the cat\nsat") != text_key("the cat sat.")


def test_margin_drops_candidates_within_margin_of_the_lowest_positive():
    # positives 0.8 and 0.7: the lowest (0.7) sets the bar; margin 0.15 keeps scores <= 0.55
    out = choose(spec(margin=0.15), cands(SCORES, positives=(("p", 0.8), ("p2", 0.7))))
    assert out.ids == ["d5", "d6", "d7"]
    assert out.dropped["margin"] == 5
    assert all(s <= 0.55 for s in out.scores)


def test_relative_margin_uses_the_positive_magnitude():
    # threshold 0.8 - 0.8 * 0.05 = 0.76: 0.9 and 0.79 go, 0.75 stays
    out = choose(spec(relative_margin=0.05), cands(SCORES))
    assert out.ids == ["d2", "d3", "d4"] and out.dropped["relative_margin"] == 2
    # a negative positive score: threshold -0.2 - 0.2 * 0.5 = -0.3 (below the positive, as in ST #3819)
    neg = cands([-0.1, -0.25, -0.3, -0.35, -0.5], positives=(("p", -0.2),))
    out = choose(spec(relative_margin=0.5), neg)
    assert out.ids == ["d2", "d3", "d4"] and out.dropped["relative_margin"] == 2


def test_max_score_drops_candidates_above_it():
    out = choose(spec(max_score=0.7), cands(SCORES))
    assert out.ids == ["d3", "d4", "d5"] and out.dropped["max_score"] == 3


def test_guards_count_each_candidate_once_in_order():
    out = choose(spec(margin=0.0, relative_margin=0.05, max_score=0.5), cands(SCORES))
    # margin 0 drops > 0.8 (d0); relative drops (0.76, 0.8] (d1); max_score drops (0.5, 0.76] (d2, d3, d4)
    assert dict(out.dropped) == {"margin": 1, "relative_margin": 1, "max_score": 3, "range_min": 0,
                                 "beyond_range_max": 0}
    assert out.ids == ["d5", "d6", "d7"]


def test_range_min_skips_the_best_survivors_after_the_guards():
    # as in sentence-transformers: the window counts candidates that survived the guards
    out = choose(spec(range_min=2, max_score=0.7), cands(SCORES))
    assert out.ids == ["d5", "d6", "d7"]
    assert out.dropped["range_min"] == 2 and out.dropped["max_score"] == 3


def test_range_max_bounds_the_window():
    out = choose(spec(num_negatives=3, range_min=3, range_max=6), cands(SCORES))
    assert out.ids == ["d3", "d4", "d5"]  # ranks 3..5
    assert out.dropped["beyond_range_max"] == 4 and out.dropped["range_min"] == 3


def test_short_when_guards_leave_too_few():
    out = choose(spec(max_score=0.25), cands(SCORES))
    assert out.ids == ["d8", "d9"]


def test_random_sampling_is_seeded_per_query_and_stays_in_the_window():
    c = cands(SCORES)
    s = spec(sampling="random", range_min=1, range_max=10, seed=7)
    a, b = choose(s, c), choose(s, c)
    assert a.ids == b.ids and len(a.ids) == 3
    assert "d0" not in a.ids
    assert a.scores == sorted(a.scores, reverse=True)
    picks = {tuple(choose(spec(sampling="random", range_min=1, range_max=10, seed=k), c).ids) for k in range(20)}
    assert len(picks) > 5


def test_shown_documents_are_taken_first_and_still_guarded():
    shown = (("s1", 0.3), ("s2", 0.95), ("s3", 0.2))  # s2 scores above the positive: relative margin drops it
    out = choose(spec(relative_margin=0.05), cands(SCORES, shown=shown))
    assert out.ids == ["s1", "s3", "d2"] and out.from_shown == 2
    assert out.dropped["relative_margin"] == 3  # d0, d1 and the shown s2


def test_shown_documents_can_compete_by_score():
    shown = (("s1", 0.72),)
    out = choose(spec(shown_first=False, num_negatives=4), cands(SCORES, shown=shown))
    assert out.ids == ["d0", "d1", "d2", "s1"] and out.from_shown == 0


def test_cross_encoder_scores_reorder_the_candidates():
    c = cands([0.9, 0.8, 0.7, 0.6])
    c.scores = np.asarray([0.1, 0.9, 0.5, 0.7], dtype=np.float32)  # rescored
    out = choose(spec(num_negatives=2), c)
    assert out.ids == ["d1", "d3"]


def test_score_summaries_and_histograms():
    d = describe([0.1, 0.2, 0.3, 0.4])
    assert d["count"] == 4 and d["mean"] == pytest.approx(0.25) and d["p50"] == pytest.approx(0.25)
    assert describe([])["mean"] is None
    h = histogram({"positive": [0.5, 0.9], "negative": [0.1, 0.2, 0.5]}, bins=4)
    assert len(h["edges"]) == 5 and sum(h["positive"]) == 2 and sum(h["negative"]) == 3
    assert h["edges"][0] == pytest.approx(0.1) and h["edges"][-1] == pytest.approx(0.9)


@pytest.mark.parametrize("kw, message", [
    ({"range_min": 10, "range_max": 10}, "range_min (10) must be below range_max (10)"),
    ({"range_min": 8, "range_max": 10, "num_negatives": 3}, "fewer candidates than num_negatives"),
])
def test_window_must_hold_the_negatives(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MineSpec(**kw)


def test_candidates_with_the_same_text_yield_one_negative():
    c = cands(SCORES)
    c.keys[2] = c.keys[1]  # d1 and d2: same normalised text, not a positive's
    out = choose(spec(), c)
    assert out.ids == ["d0", "d1", "d3"] and out.dropped["duplicate_of_negative"] == 1


def test_a_shown_document_found_by_search_is_judged_once():
    c = cands(SCORES, shown=(("d1", 0.79),))
    out = choose(spec(), c)
    assert out.ids == ["d1", "d0", "d2"] and out.from_shown == 1 and out.considered == 11
    assert sum(out.dropped.values()) == 0


def test_caps_sample_queries_then_pairs_with_the_seed():
    from vectune.data import Labels
    from vectune.mine.stage import select_pairs
    from vectune.spec import validate_dict

    qrels = {f"q{i}": {f"d{i}a": 1, f"d{i}b": 1} for i in range(10)}
    labels = Labels(qrels=qrels, queries={q: q for q in qrels})

    def pairs(**mine):
        spec = validate_dict({"version": 1, "name": "t", "data": {"corpus": {"path": "c.jsonl"}}, "mine": mine}, "t")
        return select_pairs(spec, labels)

    assert len(pairs()) == 20
    four = pairs(max_queries=4, seed=1)
    assert len({q for q, _ in four}) == 4 and len(four) == 8
    assert four == pairs(max_queries=4, seed=1) and four != pairs(max_queries=4, seed=2)
    capped = pairs(max_queries=4, max_pairs=5, seed=1)
    assert len(capped) == 5 and set(capped) <= set(four)


def test_max_pairs_is_fair_across_queries_and_prefers_higher_grades():
    """One query with 200 positives and 20 with 2 each: a cap of 40 pairs gives every query
    its share (uniform sampling over pairs would give the big query ~36 of them)."""
    from vectune.data import Labels
    from vectune.mine.stage import select_pairs
    from vectune.spec import validate_dict

    qrels = {"big": {f"b{i}": (2 if i < 3 else 1) for i in range(200)}}
    qrels.update({f"q{i}": {f"d{i}a": 1, f"d{i}b": 1} for i in range(20)})
    labels = Labels(qrels=qrels, queries={q: q for q in qrels})
    spec = validate_dict({"version": 1, "name": "t", "data": {"corpus": {"path": "c.jsonl"}},
                          "mine": {"max_pairs": 40, "seed": 4}}, "t")
    got = select_pairs(spec, labels)
    per_query = {q: sum(1 for x, _ in got if x == q) for q in qrels}
    assert len(got) == 40 and max(per_query.values()) - min(per_query.values()) <= 1
    big = [d for q, d in got if q == "big"]
    assert big and all(qrels["big"][d] == 2 for d in big)  # grade 2 before grade 1
    assert got == select_pairs(spec, labels)  # seeded


def test_max_pairs_auto_follows_the_training_budget():
    from vectune.mine.stage import pair_cap
    from vectune.spec import validate_dict

    def cap(mine=None, train=None):
        return pair_cap(validate_dict({"version": 1, "name": "t", "data": {"corpus": {"path": "c.jsonl"}},
                                       "mine": mine or {}, "train": train or {}}, "t"))

    assert cap(train={"max_steps": 100, "batch_size": 32}) == 3680  # 100 x 32 x 1.15
    assert cap(train={"max_steps": None}) is None
    assert cap(mine={"max_pairs": 7}) == 7 and cap(mine={"max_pairs": None}) is None


def _graded_query() -> QueryCandidates:
    """A strong positive (0.8), a weak one scoring below most candidates (0.35)."""
    return cands(SCORES, positives=(("p", 0.8), ("weak", 0.35)))


def test_pair_reference_judges_each_row_against_its_own_positive():
    from vectune.mine.select import choose_rows

    s = spec(relative_margin=0.05, reference="pair")
    rows = choose_rows(s, _graded_query(), ["p", "weak"])
    # the strong row: everything below 0.8 * 0.95 = 0.76
    assert rows["p"].ids == ["d2", "d3", "d4"]
    # the weak row: below 0.35 * 0.95 = 0.3325
    assert rows["weak"].ids == ["d7", "d8", "d9"]
    assert rows["p"] is not rows["weak"]


def test_weakest_reference_matches_the_library_rule_and_shares_one_choice():
    from vectune.mine.select import choose_rows

    s = spec(relative_margin=0.05, reference="weakest")
    rows = choose_rows(s, _graded_query(), ["p", "weak"])
    assert rows["p"] is rows["weak"] and rows["p"].ids == ["d7", "d8", "d9"]
    assert rows["p"].dropped["relative_margin"] == 7
    assert rows["p"].ids == choose(s, _graded_query()).ids  # the plain per-query choice


def test_emptied_by_names_the_guard_that_took_every_candidate():
    from vectune.mine.select import choose_rows

    c = cands([0.9, 0.85, 0.8], positives=(("p", 0.8), ("weak", 0.1)))
    rows = choose_rows(spec(relative_margin=0.05, reference="weakest"), c, ["p"])
    assert rows["p"].ids == [] and rows["p"].emptied_by == "relative_margin"
    assert choose(spec(range_min=3), cands([0.5, 0.4, 0.3])).emptied_by == "window"
    assert choose(spec(), cands([])).emptied_by == "no_candidates"
    assert choose(spec(), cands(SCORES)).emptied_by is None


def test_pair_reference_samples_each_row_with_its_own_seed():
    from vectune.mine.select import choose_rows

    s = spec(sampling="random", range_max=10, reference="pair", seed=3)
    c = cands(SCORES, positives=(("p", 0.95), ("p2", 0.95)))
    a, b = choose_rows(s, c, ["p", "p2"]), choose_rows(s, c, ["p", "p2"])
    assert a["p"].ids == b["p"].ids and a["p2"].ids == b["p2"].ids
    draws = {tuple(choose_rows(spec(sampling="random", range_max=10, reference="pair", seed=k), c, ["p"])["p"].ids)
             for k in range(10)}
    assert len(draws) > 1
