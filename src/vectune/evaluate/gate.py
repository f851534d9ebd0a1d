"""The promotion gate: the tuned model must beat the base model, and not regress."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from vectune.spec.evaluate import GateSpec


@dataclass
class GateDecision:
    passed: bool
    metric: str
    base: float
    tuned: float
    gain: float
    min_gain: float
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def decide(gate: GateSpec, base: dict[str, float], tuned: dict[str, float]) -> GateDecision:
    """Compare metric dicts of the base and tuned models on the same split."""
    gain = tuned[gate.metric] - base[gate.metric]
    reasons = []
    if gain < gate.min_gain:
        reasons.append(f"{gate.metric} gained {gain:+.4f} ({base[gate.metric]:.4f} -> {tuned[gate.metric]:.4f}), "
                       f"below the required {gate.min_gain:+.4f}")
    for metric in gate.no_regress:
        drop = base[metric] - tuned[metric]
        if drop > gate.tolerance:
            reasons.append(f"{metric} regressed by {drop:.4f} ({base[metric]:.4f} -> {tuned[metric]:.4f}), "
                           f"tolerance {gate.tolerance:.4f}")
    return GateDecision(passed=not reasons, metric=gate.metric, base=base[gate.metric], tuned=tuned[gate.metric],
                        gain=gain, min_gain=gate.min_gain, reasons=reasons)
