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
