"""The promotion gate's rule: the tuned model must gain enough and regress nowhere."""

from __future__ import annotations

import pytest


def test_gate_decision_rules():
    from vectune.evaluate.gate import decide
    from vectune.spec.evaluate import GateSpec

    gate = GateSpec(metric="ndcg@10", min_gain=0.01, no_regress=["recall@100"], tolerance=0.0)
    ok = decide(gate, {"ndcg@10": 0.60, "recall@100": 0.90}, {"ndcg@10": 0.62, "recall@100": 0.90})
    assert ok.passed and ok.gain == pytest.approx(0.02)
    small = decide(gate, {"ndcg@10": 0.60, "recall@100": 0.90}, {"ndcg@10": 0.605, "recall@100": 0.95})
    assert not small.passed and "below the required" in small.reasons[0]
    regress = decide(gate, {"ndcg@10": 0.60, "recall@100": 0.90}, {"ndcg@10": 0.70, "recall@100": 0.89})
    assert not regress.passed and "recall@100 regressed" in regress.reasons[0]


def _per_query(values):
    return {f"q{i}": {"ndcg@10": float(v)} for i, v in enumerate(values)}


def _means(per_query):
    import numpy as np

    return {"ndcg@10": float(np.mean([v["ndcg@10"] for v in per_query.values()]))}


def test_a_challenger_equal_to_the_champion_is_refused_by_the_p_value_rule():
    """Same weights, same per-query scores: the gain is 0, p = 1 (min_gain 0 so only the
    significance rule can refuse it)."""
    import numpy as np

    from vectune.evaluate.gate import decide
    from vectune.spec.evaluate import GateSpec

    gate = GateSpec(metric="ndcg@10", min_gain=0.0, no_regress=[])
    same = _per_query(np.random.default_rng(0).random(200))
    decision = decide(gate, _means(same), _means(same), champion_per_query=same, tuned_per_query=same)
    assert not decision.passed and decision.p_value == 1.0 and decision.ci95 == [0.0, 0.0]
    assert len(decision.reasons) == 1 and "not significant: p = 1.0000 > max_p_value 0.05" in decision.reasons[0]


def test_a_gain_below_noise_is_refused_and_a_real_one_passes_with_its_interval():
    import numpy as np

    from vectune.evaluate.gate import decide, significance
    from vectune.spec.evaluate import GateSpec

    rng = np.random.default_rng(1)
    champion = rng.random(300)
    noisy = _per_query(np.clip(champion + 0.006 + rng.normal(0, 0.25, 300), 0, 1))
    real = _per_query(np.clip(champion + 0.04 + rng.normal(0, 0.05, 300), 0, 1))
    base = _per_query(champion)
    gate = GateSpec(metric="ndcg@10", min_gain=0.0, no_regress=[])
    refused = decide(gate, _means(base), _means(noisy), champion_per_query=base, tuned_per_query=noisy)
    assert not refused.passed and refused.p_value > 0.05 and refused.ci95[0] < 0 < refused.ci95[1]
    passed = decide(gate, _means(base), _means(real), champion_per_query=base, tuned_per_query=real)
    assert passed.passed and passed.p_value < 0.001 and 0 < passed.ci95[0] < passed.gain < passed.ci95[1]
    # seeded: the same inputs give the same p and interval
    again = significance({q: v["ndcg@10"] for q, v in base.items()}, {q: v["ndcg@10"] for q, v in real.items()})
    assert (again["p_value"], again["ci95"]) == (passed.p_value, passed.ci95)
    assert "promoted: ndcg@10" in passed.summary() and "95% CI" in passed.summary() and "p = " in passed.summary()


def test_the_gate_judges_against_the_champion_and_reports_the_base():
    from vectune.evaluate.gate import decide
    from vectune.spec.evaluate import GateSpec

    gate = GateSpec(metric="ndcg@10", min_gain=0.005, no_regress=[])
    decision = decide(gate, {"ndcg@10": 0.60}, {"ndcg@10": 0.63}, champion={"ndcg@10": 0.65}, against="live",
                      champion_model={"label": "live model of x__r1 (run r1)"})
    assert not decision.passed and decision.base == 0.60 and decision.champion == 0.65
    assert "over live model of x__r1 (run r1)" in decision.reasons[0]
