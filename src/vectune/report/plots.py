"""The report's figures: matplotlib (Agg, no display) rendered to PNG data URIs."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # headless: reports are written by jobs and CI without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_COLORS = {"base": "#8c8c8c", "tuned": "#1f77b4", "model": "#2ca02c", "bm25": "#ff7f0e"}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def metric_bars(split: str, values: dict[str, dict[str, float]]) -> str:
    """Grouped bars: one group per metric, one bar per role (base, tuned, ...)."""
    roles = list(values)
    metrics = sorted({m for v in values.values() for m in v})
    x = np.arange(len(metrics))
    width = 0.8 / max(len(roles), 1)
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for i, role in enumerate(roles):
        heights = [values[role].get(m, np.nan) for m in metrics]
        bars = ax.bar(x + (i - (len(roles) - 1) / 2) * width, heights, width, label=role,
                      color=_COLORS.get(role))
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks(x, metrics)
    ax.set_ylim(0, 1.08)
    ax.set_title(f"{split} split")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _png(fig)


def loss_curve(rows: list[dict]) -> str:
    """Training loss per step, with a moving average when the curve is long enough to be noisy."""
    steps = [r["step"] for r in rows]
    loss = np.asarray([r["loss"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    ax.plot(steps, loss, lw=1, alpha=0.6, label="loss")
    window = max(1, len(loss) // 10)
    if window > 1:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, lw=2, label=f"mean of {window}")
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    return _png(fig)


def validation_curves(checkpoints: list[dict] | None, mixing: dict | None, metric: str,
                      settings: dict | None = None) -> str:
    """Validation `metric` per checkpoint step (left: one curve per learning rate tried, the
    starting model's score as a line) and per base/tuned mixing weight (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.0))
    left, right = axes
    tried = (settings or {}).get("settings") or []
    if tried:
        for i, s in enumerate(tried):
            rows = [r for r in s.get("curve") or [] if r.get(metric) is not None]
            if rows:
                early = s.get("stopped") not in (None, "ran its budget")
                left.plot([r["step"] for r in rows], [r[metric] for r in rows], "o-",
                          label=f"lr {s['learning_rate']:g}"
                          + (f", {s['positives_per_query']}/query" if s.get("positives_per_query") else "")
                          + (" (stopped early)" if early else ""))
        base = (settings.get("base") or {}).get(metric)
        if base is not None:
            left.axhline(base, ls="--", color="#444", lw=1, label=f"start: {base:.4f}")
        left.legend(fontsize=7)
    else:
        rows = [r for r in checkpoints or [] if r.get(metric) is not None]
        if rows:
            left.plot([r["step"] for r in rows], [r[metric] for r in rows], "o-", color=_COLORS["tuned"])
    left.set_xlabel("checkpoint step")
    left.set_ylabel(f"validation {metric}")
    curve = (mixing or {}).get("curve") or []
    if curve:
        right.plot([c["weight"] for c in curve], [c[metric] for c in curve], "o-", color=_COLORS["model"])
        right.axvline(mixing["weight"], ls="--", color="#444", lw=1, label=f"kept: {mixing['weight']:.2f}")
        right.legend(fontsize=8)
    right.set_xlabel("weight of the tuned model (0 = base)")
    right.set_ylabel(f"validation {metric}")
    fig.tight_layout()
    return _png(fig)


def score_histogram(hist: dict) -> str:
    """Positive vs mined-negative scores over the audit's shared bin edges."""
    edges = np.asarray(hist["edges"], dtype=float)
    centers, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    for name, color in (("positive", "#2ca02c"), ("negative", "#d62728")):
        if hist.get(name):  # densities: the two groups differ in size (3 negatives a positive, or none)
            counts = np.asarray(hist[name], dtype=float)
            density = counts / (counts.sum() * widths) if counts.sum() else counts
            ax.bar(centers, density, widths, alpha=0.55, color=color, label=f"{name} (n={int(counts.sum())})")
    ax.set_xlabel("score under the mining model")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return _png(fig)


def per_query_scatter(base: dict[str, float], tuned: dict[str, float], metric: str) -> str:
    """Each query's metric under base (x) and tuned (y): above the diagonal gained, below lost."""
    qids = sorted(set(base) & set(tuned))
    x = np.asarray([base[q] for q in qids], dtype=float)
    y = np.asarray([tuned[q] for q in qids], dtype=float)
    colors = np.where(y > x, "#2ca02c", np.where(y < x, "#d62728", "#8c8c8c"))
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.scatter(x, y, c=colors, s=14, alpha=0.7)
    ax.plot([0, 1], [0, 1], color="black", lw=0.8)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(f"base {metric}")
    ax.set_ylabel(f"tuned {metric}")
    return _png(fig)


def stage_timings(seconds: dict[str, float]) -> str:
    """Horizontal bars: wall-clock seconds per recorded stage."""
    names = list(seconds)
    fig, ax = plt.subplots(figsize=(6.5, 0.4 * len(names) + 1.0))
    bars = ax.barh(names, [seconds[n] for n in names], color="#1f77b4")
    ax.bar_label(bars, fmt="%.1f s", fontsize=8, padding=2)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    return _png(fig)
