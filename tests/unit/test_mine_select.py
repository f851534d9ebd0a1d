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


# -- the fallback: deeper negatives for rows whose window the guards emptied ---------------
def deep_query(deep_scores, *, positives=(("p", 0.5),), labelled_at=(), dup_at=(), window=(0.9, 0.85, 0.8)):
    """A query whose ordinary window (d0.. scoring `window`) lies entirely inside the
    relative margin of its positive, and a deeper ranking: the window's candidates at ranks
    0.., then x0, x1, ... scoring `deep_scores`, with the query's positives placed at
    `labelled_at` (ranks counted in the whole ranking) and copies of the first positive's
    text at `dup_at`."""
    c = cands(list(window), positives=positives)
    ids = list(c.ids)
    scores = list(window)
    extra = iter([f"x{i}" for i in range(len(deep_scores))])
    pos = iter([p for p, _ in positives])
    pos_score = dict(positives)
    deep_iter = iter(deep_scores)
    total = len(window) + len(deep_scores) + len(labelled_at)
    for r in range(len(window), total):
        if r in labelled_at:
            d = next(pos)
            ids.append(d)
            scores.append(pos_score[d])
        else:
            ids.append(next(extra))
            scores.append(next(deep_iter))
    keys = [text_key(f"text of {d}") for d in ids]
    for r in dup_at:
        keys[r] = c.positive_keys[0]
    c.deep_ids, c.deep_scores, c.deep_keys = ids, np.asarray(scores, dtype=np.float32), keys
    c.deep_start = len(window)
    return c


def fb_spec(**fallback) -> MineSpec:
    return spec(num_negatives=2, range_max=4, relative_margin=0.05,
                fallback={"band": 5, "max_false_negative_rate": 0.1, **fallback})


def test_false_negative_estimate_is_labelled_density_under_the_recall_assumption():
    from vectune.mine.fallback import estimate

    assert estimate(5, 100, 0.5) == pytest.approx(5 / 95)  # one unlabelled positive per labelled one
    assert estimate(5, 100, 0.25) == pytest.approx(5 / 95 * 3)  # sparser labels: more hidden positives
    assert estimate(5, 100, 1.0) == 0.0  # complete labels: nothing hidden
    assert estimate(0, 100, 0.5) == 0.0
    assert estimate(4, 4, 0.5) == 1.0 and estimate(60, 100, 0.5) == 1.0  # a rate, never above 1


def test_bands_count_labelled_positives_and_copies_of_their_text():
    from vectune.mine.fallback import Bands

    c = deep_query([0.3] * 12, labelled_at=(4,), dup_at=(6,))
    bands = Bands(c.deep_ids, c.deep_keys, c, 5, 0.5)
    assert bands.labelled == [1, 1, 0, 0]  # ranks 0-4 hold p, 5-9 the copy, 10-14 nothing
    assert bands.band(0).estimate == pytest.approx(1 / 4)
    assert bands.band(3).candidates == 1  # the ranking is 16 long: the last band holds rank 15
    assert bands.estimate_at(7) == pytest.approx(1 / 4) and bands.estimate_at(12) == 0.0
    assert bands.estimate_at(-1) is None and bands.estimate_at(99) is None


def test_a_row_whose_window_the_margin_empties_gets_deeper_negatives():
    from vectune.mine.fallback import complete_rows
    from vectune.mine.select import choose_rows

    # positive 0.5: the window (0.9, 0.85, 0.8) is all above 0.475; deeper, 0.49 and 0.48 are
    # too, 0.47 and below survive
    c = deep_query([0.49, 0.48, 0.47, 0.46, 0.45, 0.2, 0.1, 0.05])
    s = fb_spec()
    first = choose_rows(s, c, ["p"])["p"]
    assert first.ids == [] and first.window_emptied_by == "relative_margin"
    row = complete_rows(s, c, {"p": first})["p"]
    assert row.ids == ["x2", "x3"] and row.from_fallback == 2 and row.ranks == [5, 6]
    assert all(sc <= 0.475 for sc in row.scores)
    assert row.emptied_by is None and row.window_emptied_by == "relative_margin"
    assert row.fallback.dropped["relative_margin"] == 2 and row.fallback.taken == 2
    # band 0 (ranks 3-4 beyond the window: 0.49, 0.48) has no survivor; band 1 fills the window
    assert [(b.start, b.status, b.survivors) for b in row.fallback.bands] == [(0, "empty", 0), (5, "used", 5)]
    assert row.estimates == [0.0, 0.0]
    with_off = complete_rows(fb_spec(enabled=False), c, {"p": first})["p"]
    assert with_off.ids == [] and with_off.fallback is None and with_off.emptied_by == "relative_margin"


def test_rows_with_negatives_are_left_as_they_were():
    from vectune.mine.fallback import complete_rows
    from vectune.mine.select import choose_rows

    c = deep_query([0.3, 0.2], positives=(("p", 0.95), ("weak", 0.5)), labelled_at=(5,))
    s = fb_spec()
    rows = choose_rows(s, c, ["p", "weak"])
    done = complete_rows(s, c, rows)
    assert done["p"].ids == rows["p"].ids == ["d0", "d1"] and done["p"].from_fallback == 0
    assert done["p"].fallback is None
    # the ordinary negatives get their band's estimate too: ranks 0-2 of the window's ranking,
    # which holds no positive (the window is cut before the positives)
    assert done["p"].estimates == [0.0, 0.0]
    assert done["weak"].from_fallback == 2 and done["weak"].ids == ["x0", "x1"]


def test_the_cap_refuses_bands_dense_in_labelled_positives_and_the_walk_goes_deeper():
    from vectune.mine.fallback import complete_rows
    from vectune.mine.select import choose_rows

    # ranks 3..9 hold 0.47.. survivors, with two of the query's positives in band 1 (ranks
    # 5-9): 2 of 5 labelled, estimate 2/3; band 2 (10-14) is clean
    positives = (("p", 0.5), ("p2", 0.6), ("p3", 0.55))
    c = deep_query([0.47, 0.46, 0.45, 0.44, 0.43, 0.42, 0.41, 0.40, 0.39, 0.38, 0.37],
                   positives=positives, labelled_at=(6, 8))
    s = fb_spec(max_false_negative_rate=0.3)
    row = complete_rows(s, c, choose_rows(s, c, ["p"]))["p"]
    statuses = [(b.start, b.status) for b in row.fallback.bands]
    assert statuses == [(0, "used"), (5, "refused"), (10, "used")]
    refused = row.fallback.bands[1]
    assert refused.labelled == 2 and refused.estimate == pytest.approx(2 / 3) and refused.survivors == 3
    assert row.ids == ["x0", "x1"] and row.ranks == [3, 4]  # band 0's survivors, best first
    assert row.fallback.refused == 3
    # with a positive in every band that has survivors, a cap of 0 refuses them all: the row
    # gets no negatives and says why
    dense = deep_query([0.47, 0.46, 0.45], positives=positives, labelled_at=(3, 6))
    none = complete_rows(fb_spec(max_false_negative_rate=0.0), dense,
                         choose_rows(fb_spec(), dense, ["p"]))["p"]
    assert [(b.status, b.labelled) for b in none.fallback.bands] == [("refused", 1), ("refused", 1)]
    assert none.ids == [] and none.emptied_by == "fallback_cap" and none.fallback.refused == 3
    # the same query under a cap above both bands' estimates (1/4, 1/2) takes band 0's survivor first
    loose = complete_rows(fb_spec(max_false_negative_rate=0.5), dense, choose_rows(fb_spec(), dense, ["p"]))["p"]
    assert loose.ids == ["x0", "x1"] and loose.estimates == [pytest.approx(1 / 4), pytest.approx(1 / 2)]


def test_fallback_never_takes_a_positive_a_copy_of_one_or_a_repeated_text():
    from vectune.mine.fallback import complete_rows
    from vectune.mine.select import choose_rows

    positives = (("p", 0.5), ("p2", 0.3))
    c = deep_query([0.47, 0.46, 0.45, 0.44], positives=positives, labelled_at=(3,), dup_at=(4,))
    c.deep_keys[6] = c.deep_keys[5]  # x2 reads like x1
    s = spec(num_negatives=3, range_max=4, relative_margin=0.05, fallback={"band": 5, "max_false_negative_rate": 1.0})
    row = complete_rows(s, c, choose_rows(s, c, ["p"]))["p"]
    assert c.deep_ids[3] == "p" and "p" not in row.ids and c.deep_ids[4] not in row.ids
    assert row.ids == ["x1", "x3"]
    assert row.fallback.dropped["labelled_positive"] == 1
    assert row.fallback.dropped["duplicate_of_positive"] == 1
    assert row.fallback.dropped["duplicate_of_negative"] == 1
    assert row.fallback.duplicates == [c.deep_ids[4]]


def test_fallback_skips_candidates_the_window_already_judged():
    from vectune.mine.fallback import complete_rows
    from vectune.mine.select import choose_rows

    c = deep_query([0.3, 0.2, 0.1])
    # the deeper ranking's re-sort put a window candidate below the window's depth
    c.deep_ids[4] = "d0"
    s = fb_spec()
    row = complete_rows(s, c, choose_rows(s, c, ["p"]))["p"]
    assert "d0" not in row.ids and row.ids == ["x0", "x2"]


def test_weakest_reference_shares_one_fallback_across_the_rows():
    from vectune.mine.fallback import complete_rows
    from vectune.mine.select import choose_rows

    c = deep_query([0.47, 0.3, 0.2, 0.1], positives=(("p", 0.95), ("weak", 0.5)))
    s = spec(num_negatives=2, range_max=4, relative_margin=0.05, reference="weakest", fallback={"band": 5})
    rows = complete_rows(s, c, choose_rows(s, c, ["p", "weak"]))
    assert rows["p"] is rows["weak"] and rows["p"].ids == ["x0", "x1"] and rows["p"].from_fallback == 2


def test_fallback_random_sampling_is_seeded_and_stays_in_the_accepted_window():
    from vectune.mine.fallback import complete_rows
    from vectune.mine.select import choose_rows

    c = deep_query([0.47 - 0.01 * i for i in range(20)])
    draws = set()
    for seed in range(12):
        s = spec(num_negatives=2, range_min=0, range_max=6, relative_margin=0.05, sampling="random", seed=seed,
                 fallback={"band": 5})
        row = complete_rows(s, c, choose_rows(s, c, ["p"]))["p"]
        again = complete_rows(s, c, choose_rows(s, c, ["p"]))["p"]
        assert row.ids == again.ids and len(row.ids) == 2
        assert set(row.ids) <= {f"x{i}" for i in range(6)}  # the window: the first range_max survivors
        assert row.scores == sorted(row.scores, reverse=True)
        draws.add(tuple(row.ids))
    assert len(draws) > 3


def test_positive_rank_is_the_round_robin_order_capped_or_not():
    from vectune.data import Labels
    from vectune.mine.budget import budget_report, plan_pairs
    from vectune.spec import validate_dict

    qrels = {f"q{i}": {f"d{i}{c}": (2 if c == "a" else 1) for c in "abcd"} for i in range(6)}
    labels = Labels(qrels=qrels, queries={q: q for q in qrels})

    def plan(**mine):
        spec_ = validate_dict({"version": 1, "name": "t", "data": {"corpus": {"path": "c.jsonl"}},
                               "mine": {"seed": 5, **mine}}, "t")
        return spec_, plan_pairs(spec_, labels)

    _, full = plan(max_pairs=None)
    assert len(full.pairs) == 24
    for q in qrels:
        ranks = {d: full.positive_rank[(q, d)] for d in qrels[q]}
        assert sorted(ranks.values()) == [0, 1, 2, 3]
        assert ranks[f"{q[1:].join(['d', 'a'])}"] == 0  # the grade-2 positive comes first
    spec_, capped = plan(max_pairs=9)
    assert len(capped.pairs) == 9
    # the cap takes each query's first positives in the same order: ranks 0 for all, 1 for 3
    assert all(capped.positive_rank[p] == full.positive_rank[p] for p in capped.pairs)
    assert sorted(capped.positive_rank.values()) == [0] * 6 + [1] * 3
    report = budget_report(spec_, labels, capped)
    assert report["capped"] and report["cap"] == 9
    assert report["labelled"] == {"queries": 6, "queries_drawn": 6, "pairs": 24,
                                  "positives_per_query": {"mean": 4.0, "min": 4, "p50": 4.0, "p90": 4.0, "max": 4,
                                                          "counts": {"4": 6}}}
    assert report["spent"]["queries"] == 6 and report["spent"]["pairs"] == 9
    assert report["spent"]["positives_per_query"]["counts"] == {"1": 3, "2": 3}
    assert report["spent"]["queries_with_every_positive"] == 0
    assert report["rows_by_positive_rank"] == {"0": 6, "1": 3}
    assert not budget_report(spec_, labels, full)["capped"]
