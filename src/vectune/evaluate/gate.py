"""The promotion gate: the challenger (the tuned model) must beat the champion (the model
serving now, or the base model) by a margin that is significant over the split's queries,
and must not regress.

Significance is a paired test over per-query values of the gate metric, with scipy:
`scipy.stats.permutation_test` flipping the sign of each query's difference (the paired
randomization test; one-sided: is the challenger better?) and `scipy.stats.bootstrap` for a
95% confidence interval of the mean gain, both seeded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from vectune.spec.evaluate import GateSpec


@dataclass
class GateDecision:
    """What the gate decided, and on what evidence.

    `base` is the base model's score (always reported), `champion` the score of the model
    the challenger had to beat (`against`: `live` or `base`; `champion_model` says which),
    `gain` the challenger's over the champion, with its one-sided `p_value` and `ci95`.
    """

    passed: bool
    metric: str
    base: float
    tuned: float
    gain: float
    min_gain: float
    champion: float | None = None
    against: str = "base"
    champion_model: dict = field(default_factory=dict)
    p_value: float | None = None
    ci95: list[float] | None = None
    max_p_value: float | None = None
    queries: int | None = None
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line: the decision, against which model, the gain with its interval and p."""
        verdict = "promoted" if self.passed else "refused"
        who = self.champion_model.get("label") or self.against
        line = f"{verdict}: {self.metric} {self.tuned:.4f} vs {self.champion if self.champion is not None else self.base:.4f} ({who}), gain {self.gain:+.4f}"
        if self.ci95 is not None:
            line += f" [95% CI {self.ci95[0]:+.4f}, {self.ci95[1]:+.4f}]"
        if self.p_value is not None:
            line += f", p = {self.p_value:.4f} over {self.queries} queries"
        return line


def significance(champion: dict[str, float], challenger: dict[str, float], *, resamples: int = 10_000,
                 seed: int = 12) -> dict:
    """Paired comparison of per-query values (query id -> metric value) of two models.

    Returns `p_value` (one-sided, challenger better: a paired sign-flip permutation test of
    the mean difference), `ci95` (percentile bootstrap of the mean difference) and `queries`.
    Identical values on every query give p = 1 and a zero interval: no evidence at all.
    """
    from scipy import stats

    qids = sorted(set(champion) & set(challenger))
    diff = np.array([challenger[q] - champion[q] for q in qids], dtype=np.float64)
    if len(diff) < 2 or not np.any(diff):
        mean = float(diff.mean()) if len(diff) else 0.0
        return {"p_value": 1.0, "ci95": [mean, mean], "queries": len(qids)}
    mean = lambda x, axis=-1: np.mean(x, axis=axis)  # noqa: E731 - vectorised statistic
    test = stats.permutation_test((diff,), mean, permutation_type="samples", alternative="greater",
                                  n_resamples=resamples, vectorized=True, rng=np.random.default_rng(seed))
    boot = stats.bootstrap((diff,), mean, n_resamples=resamples, confidence_level=0.95, method="percentile",
                           vectorized=True, rng=np.random.default_rng(seed + 1))
    low, high = boot.confidence_interval
    return {"p_value": float(test.pvalue), "ci95": [float(low), float(high)], "queries": len(qids)}


def decide(gate: GateSpec, base: dict[str, float], tuned: dict[str, float], *,
           champion: dict[str, float] | None = None, champion_per_query: dict[str, dict[str, float]] | None = None,
           tuned_per_query: dict[str, dict[str, float]] | None = None, against: str = "base",
           champion_model: dict | None = None) -> GateDecision:
    """Compare the tuned model's metrics with the champion's (default: the base model's) on
    one split; with per-query values of both, the gain must also be significant."""
    best = champion if champion is not None else base
    gain = tuned[gate.metric] - best[gate.metric]
    who = (champion_model or {}).get("label") or ("the base model" if against == "base" else "the live model")
    reasons = []
    if gain < gate.min_gain:
        reasons.append(f"{gate.metric} gained {gain:+.4f} over {who} ({best[gate.metric]:.4f} -> "
                       f"{tuned[gate.metric]:.4f}), below the required {gate.min_gain:+.4f}")
    test: dict = {}
    if champion_per_query is not None and tuned_per_query is not None:
        test = significance({q: v[gate.metric] for q, v in champion_per_query.items()},
                            {q: v[gate.metric] for q, v in tuned_per_query.items()},
                            resamples=gate.resamples, seed=gate.seed)
        if test["p_value"] > gate.max_p_value:
            reasons.append(f"the gain is not significant: p = {test['p_value']:.4f} > max_p_value "
                           f"{gate.max_p_value} (95% CI of the gain {test['ci95'][0]:+.4f} to {test['ci95'][1]:+.4f}, "
                           f"{test['queries']} queries)")
    for metric in gate.no_regress:
        drop = best[metric] - tuned[metric]
        if drop > gate.tolerance:
            reasons.append(f"{metric} regressed by {drop:.4f} against {who} ({best[metric]:.4f} -> "
                           f"{tuned[metric]:.4f}), tolerance {gate.tolerance:.4f}")
    return GateDecision(passed=not reasons, metric=gate.metric, base=base[gate.metric], tuned=tuned[gate.metric],
                        gain=gain, min_gain=gate.min_gain, champion=best[gate.metric], against=against,
                        champion_model=dict(champion_model or {}), p_value=test.get("p_value"),
                        ci95=test.get("ci95"), max_p_value=gate.max_p_value if test else None,
                        queries=test.get("queries"), reasons=reasons)
