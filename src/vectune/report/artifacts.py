"""What a run folder holds, read leniently: a missing file is `None`, never an error."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _jsonl(path: Path) -> list[dict] | None:
    if not path.is_file():
        return None
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash: the rest of the curve still plots
    return rows


@dataclass
class RunArtifacts:
    """The files a report draws on.

    Attributes:
        dir: the run folder.
        manifest: `manifest.json` (lineage, stages, gate, collection).
        metrics: `metrics.json`: {role: {split: summary}}.
        per_query: {"<role>-<split>": {qid: {metric: value}}} from `per_query/`.
        loss: `train/loss.jsonl` rows, one per optimizer step.
        audit: `mine/mine_audit.json`.
        validation: `train/validation.jsonl`: each checkpoint's score on the validation queries.
        interpolation: `train/interpolation.json`: the base/tuned mixing curve and the weight kept.
        settings: `train/settings.json`: every learning rate tried, its validation curve and why it
            stopped, the starting model's score, and what was kept.
    """

    dir: Path
    manifest: dict = field(default_factory=dict)
    metrics: dict | None = None
    per_query: dict[str, dict] = field(default_factory=dict)
    loss: list[dict] | None = None
    audit: dict | None = None
    validation: list[dict] | None = None
    interpolation: dict | None = None
    triples: list[dict] | None = None
    settings: dict | None = None

    @classmethod
    def read(cls, run_dir: str | Path) -> "RunArtifacts":
        d = Path(run_dir)
        per_query = {}
        if (d / "per_query").is_dir():
            for p in sorted((d / "per_query").glob("*.json")):
                loaded = _json(p)
                if isinstance(loaded, dict):
                    per_query[p.stem] = loaded
        return cls(dir=d, manifest=_json(d / "manifest.json") or {}, metrics=_json(d / "metrics.json"),
                   per_query=per_query, loss=_jsonl(d / "train" / "loss.jsonl"),
                   audit=_json(d / "mine" / "mine_audit.json"), validation=_jsonl(d / "train" / "validation.jsonl"),
                   interpolation=_json(d / "train" / "interpolation.json"), triples=_triples(d / "mine" / "triples.parquet"),
                   settings=_json(d / "train" / "settings.json"))

    def query_text(self, split: str, qid: str) -> str:
        """The text of a query of `split` (from `per_query/queries-<split>.json`), or ''."""
        return str((self.per_query.get(f"queries-{split}") or {}).get(qid, ""))

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id") or self.dir.name)

    def splits(self) -> list[str]:
        """Every split some role was scored on, in first-seen order."""
        out: list[str] = []
        for by_split in (self.metrics or {}).values():
            for split in by_split:
                if split not in out:
                    out.append(split)
        return out


def _triples(path: Path, sample: int = 8, seed: int = 12) -> list[dict] | None:
    """A seeded sample of mined rows with their texts (for eyeballing false negatives)."""
    if not path.is_file():
        return None
    try:
        import numpy as np
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["query_id", "query", "positive_id", "positive", "positive_score",
                                             "negative_ids", "negatives", "negative_scores"])
    except Exception:  # noqa: BLE001 - a torn or older file costs the sample, not the report
        return None
    if table.num_rows == 0:
        return []
    rows = np.random.default_rng(seed).choice(table.num_rows, size=min(sample, table.num_rows), replace=False)
    return table.take(sorted(rows.tolist())).to_pylist()
