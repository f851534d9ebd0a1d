"""Run reports: one self-contained HTML page per run (metrics, plots, lineage)."""

from __future__ import annotations

import os
from pathlib import Path

from vectune.errors import DataError
from vectune.report.artifacts import RunArtifacts

REPORT = "report.html"


def render_report(run_dir: str | Path) -> str:
    """The HTML report of a run folder as a string."""
    from vectune.report.html import render

    d = Path(run_dir)
    if not (d / "manifest.json").is_file():
        raise DataError(str(d), "not a vectune run folder (no manifest.json): pass runs/<spec name>/<run id>")
    return render(RunArtifacts.read(d))


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report (default `<run_dir>/report.html`) atomically; returns its path."""
    target = Path(out) if out else Path(run_dir) / REPORT
    page = render_report(run_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, target)
    return target


__all__ = ["REPORT", "RunArtifacts", "render_report", "write_report"]
