"""The pre-flight verdict on a mine audit: the share of queries with negatives and the
guard to blame, worded with the audit's own figures."""

from __future__ import annotations

from vectune.mine.audit import preflight


def _audit(**kw):
    base = {"queries_mined": 563, "queries_with_negatives": 4, "share_of_queries_with_negatives": 4 / 563,
            "rows_without_negatives": 980, "triples_out": 1000, "candidates": 123468, "reference": "weakest",
            "dropped": {"labelled_positive": 9000, "relative_margin": 98927, "margin": 0},
            "emptied_by": {"queries": {"relative_margin": 540, "labelled_positive": 19}, "rows": {}}}
    return {**base, **kw}


def test_low_share_names_the_guard_with_its_figures():
    v = preflight(_audit())
    assert v["low"] and v["guard"] == "relative_margin" and v["queries_emptied"] == 540
    msg = v["message"]
    assert "4 of 563 mined queries (1%)" in msg
    assert "relative_margin emptied 540 queries and dropped 98,927 of 123,468 candidates" in msg
    assert "mine.relative_margin" in msg and "reference: weakest" in msg


def test_healthy_mine_is_not_low():
    v = preflight(_audit(queries_with_negatives=500, share_of_queries_with_negatives=500 / 563,
                         emptied_by={"queries": {"window": 3}, "rows": {}}))
    assert not v["low"] and v["guard"] == "window"
    assert preflight(_audit(share_of_queries_with_negatives=1.0, emptied_by={"queries": {}}))["guard"] is None


def _fallback_audit(**fallback):
    base = {"enabled": True, "depth": 1000, "max_false_negative_rate": 0.1, "queries_with_fallback_negatives": 300,
            "false_negative_rate": {"fallback": 0.0421, "fallback_max": 0.09, "ordinary": 0.0113},
            "bands": {"refused_survivors": 0}}
    return {**base, **fallback}


def test_preflight_counts_the_fallback_and_its_false_negative_rate():
    v = preflight(_audit(queries_with_negatives=470, share_of_queries_with_negatives=470 / 563,
                         emptied_by={"queries": {"relative_margin": 93}, "rows": {}}, fallback=_fallback_audit()))
    assert not v["low"] and v["queries_from_fallback"] == 300 and v["fallback_false_negative_rate"] == 0.0421
    assert ("470 of 563 mined queries (83%) have hard negatives (300 of them from the fallback, 1000 ranks deeper: "
            "estimated false-negative rate 0.042 against 0.011 in ordinary windows)") in v["message"]
    # what still emptied windows: the fallback found nothing within its depth for them
    assert "lower mine.relative_margin (or set it to null); or let the fallback search deeper " \
           "(mine.fallback.depth)" in v["message"]


def test_preflight_points_at_the_fallback_when_it_is_off_or_capped():
    off = preflight(_audit(fallback=_fallback_audit(enabled=False, queries_with_fallback_negatives=0)))
    assert "mine.fallback.enabled: true" in off["message"] and "from the fallback" not in off["message"]
    capped = preflight(_audit(emptied_by={"queries": {"fallback_cap": 400, "relative_margin": 20}, "rows": {}},
                              fallback=_fallback_audit(bands={"refused_survivors": 12345})))
    assert capped["guard"] == "fallback_cap" and capped["low"]
    assert "fallback_cap emptied 400 queries (its bands above 0.1 held 12,345 candidates)" in capped["message"]
    assert "raise mine.fallback.max_false_negative_rate" in capped["message"]


def test_fallback_and_output_reports_add_up_the_rows():
    from collections import Counter

    from vectune.mine.audit import fallback_report, output_report
    from vectune.mine.select import Band, Fallback
    from vectune.mine.select import Choice
    from vectune.spec import validate_dict

    spec = validate_dict({"version": 1, "name": "t", "data": {"corpus": {"path": "c.jsonl"}},
                          "mine": {"num_negatives": 2}}, "t")
    ordinary = Choice(ids=["a", "b"], scores=[0.5, 0.4], dropped=Counter(), ranks=[0, 3], estimates=[0.01, 0.03])
    used = Band(start=100, end=200, candidates=100, labelled=4, estimate=4 / 96, survivors=30, status="used")
    refused = Band(start=0, end=100, candidates=100, labelled=20, estimate=0.25, survivors=5, status="refused")
    rescued = Choice(ids=["c", "d"], scores=[0.2, 0.1], dropped=Counter(relative_margin=150), ranks=[120, 121],
                     estimates=[4 / 96, 4 / 96], from_fallback=2,
                     fallback=Fallback(bands=[refused, used], dropped=Counter(relative_margin=40, labelled_positive=3),
                                       considered=60, taken=2))
    capped = Choice(ids=[], scores=[], dropped=Counter(relative_margin=150), ranks=[], estimates=[],
                    fallback=Fallback(bands=[refused], dropped=Counter(relative_margin=10), considered=15))
    choices = {("q1", "p"): ordinary, ("q2", "p"): rescued, ("q3", "p"): capped}
    r = fallback_report(spec, choices)
    assert r["windows_emptied"]["rows"] == 2 and r["windows_emptied"]["queries"] == 2
    assert r["windows_emptied"]["by_guard"]["rows"] == {"relative_margin": 2}
    assert r["rows_with_fallback_negatives"] == 1 and r["queries_with_fallback_negatives"] == 1
    assert r["rows_refused_by_cap"] == 1 and r["rows_nothing_found"] == 0 and r["negatives"] == 2
    assert r["bands"] == {"visited": 3, "used": 1, "refused": 2, "empty": 0, "refused_survivors": 10,
                          "refused_estimate": r["bands"]["refused_estimate"]}
    assert r["bands"]["refused_estimate"]["min"] == 0.25
    assert r["false_negative_rate"]["fallback"] == round(4 / 96, 6)
    assert r["false_negative_rate"]["ordinary"] == 0.02
    assert r["labelled_positive_density_of_used_bands"] == 0.04
    assert r["dropped"]["relative_margin"] == 50 and r["dropped"]["labelled_positive"] == 3
    assert r["rank"]["min"] == 120 and r["candidates"] == 75
    rows = {"query_id": ["q1", "q2", "q3"], "negative_ids": [["a", "b"], ["c", "d"], []],
            "fallback_negatives": [0, 2, 0]}
    out = output_report(spec, rows)
    assert out["rows"] == 3 and out["queries"] == 3 and out["rows_with_hard_negatives"] == 2
    assert out["negatives_per_row"]["counts"] == {"0": 1, "2": 2}
    assert out["negatives"] == {"window": 2, "fallback": 2} and out["rows_with_fallback_negatives"] == 1
    assert out["positives_per_query"]["counts"] == {"1": 3}
