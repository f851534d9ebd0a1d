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
