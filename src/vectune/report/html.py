"""The report as one self-contained HTML page: inline CSS, PNG data URIs, no scripts."""

from __future__ import annotations

import html
import json
from typing import Any, Callable

import yaml

from vectune.report import plots
from vectune.report.artifacts import RunArtifacts

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:980px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f5f5f5}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:12px}img{max-width:100%}
.missing{color:#888;font-style:italic}.pass{color:#2a7d2a;font-weight:bold}.fail{color:#b22;font-weight:bold}
.gain{color:#2a7d2a}.loss{color:#b22}code{font-size:12px}
"""

GAIN_METRIC = "ndcg@10"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, name: str = "") -> str:
    """Metrics to 4 decimals (the test compares on this format); seconds, and other numbers
    of 100 or more, to one; whole numbers as integers (no `659.5000`, no `12.0000`)."""
    if isinstance(value, float):
        if "second" in name or abs(value) >= 100:
            return f"{value:,.1f}"
        if value.is_integer() and ("step" in name or "count" in name or "rows" in name):
            return f"{int(value):,}"
        return f"{value:.4f}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else _e(value)


def _missing(what: str) -> str:
    return f'<p class="missing">{_e(what)}: not run</p>'


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{_e(alt)}">'


def _table(header: list[str], rows: list[list[Any]], numeric: bool = True) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = [f"<th>{_e(row[0])}</th>"]
        for column, v in zip(header[1:], row[1:]):
            is_num = numeric and isinstance(v, (int, float)) and not isinstance(v, bool)
            name = str(row[0]) if header[:2] == ["key", "value"] else str(column)
            cells.append(f'<td class="num">{_num(v, name)}</td>' if is_num else f"<td>{_e(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv(items: dict) -> str:
    return _table(["key", "value"], [[k, v if isinstance(v, (int, float, str)) or v is None else json.dumps(v)]
                                     for k, v in items.items()])


# -- sections -------------------------------------------------------------------------
#: the order of the metrics table's rows; BM25 (`vectune.evaluate.bm25`) is the baseline to beat
_ROLES = ("base", "champion", "tuned", "model", "bm25")


def _metrics(a: RunArtifacts) -> str:
    if not a.metrics:
        return _missing("evaluation")
    parts = []
    for split in a.splits():
        found = {role: by[split]["metrics"] for role, by in a.metrics.items() if split in by}
        rows = {r: found[r] for r in sorted(found, key=lambda r: (_ROLES.index(r) if r in _ROLES else len(_ROLES)))}
        names = sorted({m for v in rows.values() for m in v})
        table_rows = [[role] + [vals.get(m, "-") for m in names] for role, vals in rows.items()]
        for model, other in [("tuned", "base")] + [(r, "bm25") for r in rows if r != "bm25"]:
            if model in rows and other in rows:
                table_rows.append([f"{model} - {other}"] + [rows[model][m] - rows[other][m]
                                                           if m in rows[model] and m in rows[other] else "-"
                                                           for m in names])
        queries = {role: by[split].get("num_queries") for role, by in a.metrics.items() if split in by}
        parts.append(f"<h3>{_e(split)} split</h3>"
                     f"<p>queries: {_e(', '.join(f'{r} {n}' for r, n in queries.items()))}</p>"
                     + _table(["model", *names], table_rows) + _img(plots.metric_bars(split, rows), f"{split} metrics"))
    if "bm25" in a.metrics:
        parts.append("<p>bm25: Qdrant's BM25 (qdrant-edge, the spec's <code>bm25</code> settings) over the "
                     "same corpus and queries, reported beside the models; the gate never decides on it.</p>")
    return "".join(parts)


def _per_query(a: RunArtifacts, metric: str = GAIN_METRIC) -> str:
    pairs = [(s, a.per_query.get(f"base-{s}"), a.per_query.get(f"tuned-{s}")) for s in a.splits()]
    pairs = [(s, b, t) for s, b, t in pairs if b and t]
    if not pairs:
        return _missing("per-query comparison of base and tuned models")
    parts = []
    for split, base, tuned in pairs:
        b = {q: v[metric] for q, v in base.items() if metric in v}
        t = {q: v[metric] for q, v in tuned.items() if metric in v}
        common = sorted(set(b) & set(t))
        deltas = {q: t[q] - b[q] for q in common}
        gained = sum(d > 0 for d in deltas.values())
        lost = sum(d < 0 for d in deltas.values())
        worst = sorted(deltas.items(), key=lambda kv: kv[1])[:5]
        best = sorted(deltas.items(), key=lambda kv: -kv[1])[:5]
        parts.append(
            f"<h3>{_e(split)}: {_e(metric)} per query</h3>"
            f'<p><span class="gain">{gained} gained</span>, <span class="loss">{lost} lost</span>, '
            f"{len(common) - gained - lost} unchanged of {len(common)} queries</p>"
            + _img(plots.per_query_scatter(b, t, metric), f"{split} per-query {metric}")
            + _table(["query", "text", f"base {metric}", f"tuned {metric}", "change"],
                     [[q, a.query_text(split, q)[:120], b[q], t[q], d]
                      for q, d in best + [kv for kv in worst if kv not in best]]))
    return "".join(parts)


def _setting(s: dict) -> str:
    """A training setting: its learning rate, and its positives per query when capped."""
    per_query = s.get("positives_per_query")
    return f"lr {s.get('learning_rate'):g}" + (f", {per_query} positives/query" if per_query else "")


def _served_modes(modes: dict | None, metric: str) -> str:
    """The kept and the starting model on validation in every way they can be served (dense,
    hybrid under each fusion), beside BM25 alone; the spec's own way marked."""
    if not modes:
        return ""
    served = modes.get("served")
    roles = [r for r in modes if r not in ("bm25", "served")]
    names = list(dict.fromkeys(m for r in roles for m in modes[r]))
    rows = [[r, *((modes[r].get(m) or {}).get(metric, "-") for m in names)] for r in roles]
    header = [f"{m} (served)" if m == served else m for m in names]
    bm25 = (modes.get("bm25") or {}).get(metric)
    return ("<h3>validation by serving mode</h3>" + _table(["model", *header], rows)
            + f"<p>{_e(metric)} on the validation queries; the spec serves {_e(served)}"
            + (f"; BM25 alone {bm25:.4f}" if isinstance(bm25, (int, float)) else "") + "</p>")


def _train(a: RunArtifacts) -> str:
    info = a.manifest.get("stages", {}).get("train")
    if not a.loss and not info and not a.settings:
        return _missing("train stage")
    parts = []
    if info:
        outputs = {k: v for k, v in (info.get("outputs") or {}).items()}
        parts.append(_kv({"status": info.get("status"), "seconds": info.get("seconds"), **outputs}))
    parts.append(_img(plots.loss_curve(a.loss), "training loss") if a.loss else _missing("loss log"))
    if a.validation or a.interpolation or a.settings:
        metric = (a.settings or {}).get("primary") or (a.interpolation or {}).get("primary") or next(
            (k for k in (a.validation or [{}])[0] if k != "step"), "ndcg@10")
        parts.append("<h3>validation on held-out training queries</h3>")
        parts.append(_img(plots.validation_curves(a.validation, a.interpolation, metric, a.settings),
                          "validation per checkpoint of each learning rate, and per mixing weight"))
        if a.settings and a.settings.get("settings"):
            base = (a.settings.get("base") or {}).get(metric)
            rows = [["start (before step 1)", "", base, ""]]
            for s in a.settings["settings"]:
                for c in s.get("curve") or []:
                    rows.append([_setting(s), c["step"], c.get(metric), s.get("stopped", "")])
            parts.append(_table(["setting", "step", f"validation {metric}", "ended"], rows))
            chosen = a.settings.get("chosen") or {}
            verdict = ("beats the starting model" if chosen.get("beats_base") else
                       "does not beat the starting model: the run stopped before the gate"
                       if chosen.get("beats_base") is False else "")
            parts.append(f"<p>kept: {_e(_setting(chosen))}, step {_e(chosen.get('step'))}, "
                         f"tuned weight {_e(chosen.get('weight'))}; {_e(verdict)}</p>")
            parts.append(_served_modes(a.settings.get("modes"), metric))
        if a.interpolation:
            curve = a.interpolation.get("curve") or []
            names = [k for k in (curve[0] if curve else {}) if k != "weight"]
            parts.append(_table(["tuned weight", *names], [[c["weight"], *(c.get(n) for n in names)] for c in curve]))
            skipped = a.interpolation.get("skipped") or []
            parts.append(f"<p>kept weight {a.interpolation.get('weight')}: the gate judges this model"
                         + (f" (not scored: {_e(', '.join(str(w) for w in skipped))}, past the peak of the weights "
                            "scored from the better end inward)" if skipped else "") + "</p>")
    return "".join(parts)


def _mine(a: RunArtifacts) -> str:
    if not a.audit:
        return _missing("mine stage")
    au = a.audit
    counts = {k: au.get(k) for k in ("queries_mined", "pairs_mined", "triples_out", "negatives_out",
                                     "queries_short", "queries_without_negatives", "rows_without_negatives",
                                     "reference", "candidates", "score_source")}
    counts["grades mined"] = (au.get("grades") or {}).get("mined")
    scores = au.get("scores") or {}
    stats = ["count", "mean", "std", "min", "p5", "p50", "p95", "max"]
    rows = [[name] + [(scores.get(name) or {}).get(s, "-") for s in stats]
            for name in ("positive", "negative", "difference") if scores.get(name)]
    parts = [_kv(counts), "<h3>dropped by guard</h3>", _kv(au.get("dropped") or {}),
             "<h3>queries left without negatives, by guard</h3>",
             _kv((au.get("emptied_by") or {}).get("queries") or {"none": 0}),
             "<h3>scores</h3>", _table(["scores", *stats], rows)]
    hist = scores.get("histogram") or {}
    parts.append(_img(plots.score_histogram(hist), "positive vs negative scores") if hist.get("edges")
                 else _missing("score histogram"))
    if a.triples:
        parts.append("<h3>a sample of mined rows (look for false negatives: a negative that answers the query)</h3>")
        rows = []
        for r in a.triples:
            negatives = "<br>".join(f"{_e(i)} ({s:.3f}): {_e(x[:160])}" for i, x, s in
                                    zip(r["negative_ids"], r["negatives"], r["negative_scores"])) or "(none)"
            rows.append(f"<tr><td>{_e(r['query'][:200])}</td><td>{_e(r['positive_id'])} ({r['positive_score']:.3f}): "
                        f"{_e(r['positive'][:160])}</td><td>{negatives}</td></tr>")
        parts.append("<table><thead><tr><th>query</th><th>positive</th><th>hard negatives</th></tr></thead>"
                     f"<tbody>{''.join(rows)}</tbody></table>")
    return "".join(parts)


def _timings(a: RunArtifacts) -> str:
    stages = a.manifest.get("stages") or {}
    if not stages:
        return _missing("stages")
    rows = [[name, info.get("status"), info.get("seconds", "-"), info.get("started", ""), info.get("error", "")]
            for name, info in stages.items()]
    seconds = {n: float(i["seconds"]) for n, i in stages.items() if isinstance(i.get("seconds"), (int, float))}
    return _table(["stage", "status", "seconds", "started", "error"], rows) + (
        _img(plots.stage_timings(seconds), "stage timings") if seconds else "")


def _gate(a: RunArtifacts) -> str:
    gate = a.manifest.get("gate")
    if not gate:
        return _missing("gate")
    verdict = '<span class="pass">passed</span>' if gate.get("passed") else '<span class="fail">failed</span>'
    reasons = "".join(f"<li>{_e(r)}</li>" for r in gate.get("reasons") or []) or "<li>none</li>"
    rest = {k: v for k, v in gate.items() if k not in ("passed", "reasons")}
    return f"<p>gate {verdict}</p>{_kv(rest)}<p>reasons:</p><ul>{reasons}</ul>"


def _lineage(a: RunArtifacts) -> str:
    m = a.manifest
    parts = [_kv({k: m.get(k) for k in ("run_id", "name", "created", "spec_hash", "spec_file", "host")})]
    data = m.get("data") or {}
    parts.append("<h3>data</h3>" + (_table(["file", "sha256"], [[p, h] for p, h in data.items()], numeric=False)
                                    if data else _missing("data hashes")))
    models = m.get("models") or {}
    parts.append("<h3>models</h3>" + (
        _table(["role", "name", "path", "fingerprint"],
               [[r, v.get("name", ""), v.get("path", ""), v.get("fingerprint", "")] for r, v in models.items()],
               numeric=False) if models else _missing("models")))
    parts.append("<h3>collection</h3>" + (_kv(m["collection"]) if m.get("collection") else _missing("re-index")))
    parts.append("<h3>packages</h3>" + (_kv(m["packages"]) if m.get("packages") else _missing("packages")))
    spec = m.get("spec")
    parts.append("<h3>spec</h3>" + (f"<pre>{_e(yaml.safe_dump(spec, sort_keys=False))}</pre>" if spec
                                    else _missing("spec")))
    return "".join(parts)


SECTIONS: list[tuple[str, Callable[[RunArtifacts], str]]] = [
    ("Metrics: base, tuned and BM25", _metrics),
    ("Per-query changes", _per_query),
    ("Gate decision", _gate),
    ("Training", _train),
    ("Mined negatives", _mine),
    ("Stage timings", _timings),
    ("Lineage", _lineage),
]


def render(a: RunArtifacts) -> str:
    """The whole page. A section that fails to draw says so instead of sinking the report."""
    body = []
    for title, fn in SECTIONS:
        try:
            content = fn(a)
        except Exception as exc:  # a malformed artifact costs one section, not the report
            content = f'<p class="missing">could not render: {_e(type(exc).__name__)}: {_e(exc)}</p>'
        body.append(f"<h2>{_e(title)}</h2>{content}")
    name = a.manifest.get("name", "")
    gate = a.manifest.get("gate") or {}
    headline = f'<p class="summary">{_e(gate["summary"])}</p>' if gate.get("summary") else ""
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>vectune report: {_e(name)} {_e(a.run_id)}</title><style>{_CSS}</style></head><body>"
            f"<h1>vectune run {_e(a.run_id)} <small>({_e(name)})</small></h1>{headline}{''.join(body)}</body></html>\n")
