"""Scores of a model on a split, kept across runs: `<runs>/_cache/scores/`, keyed by the
model's fingerprint, the split and every setting that changes the scores (data, model,
evaluate sections). The champion of the gate (the live or the base model) is scored once,
not on every run that challenges it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from vectune.data import DomainData
from vectune.embed import model_fingerprint
from vectune.evaluate.stage import Evaluation, evaluate_model
from vectune.spec import Spec

log = logging.getLogger(__name__)


def scores_digest(spec: Spec) -> str:
    """What changes a model's scores on a split: the data and model sections, and of the
    evaluate section its metrics and depth (not the gate, nor how the work is spread)."""
    import hashlib

    from vectune.embed.encoder import precision_identity
    from vectune.precision import resolved

    spec = resolved(spec)  # the digest keys the resolved precision, never `auto`
    dump = spec.canonical()
    evaluate = {k: dump["evaluate"][k] for k in ("metrics", "k")}
    model = dump["model"] | {"precision": precision_identity(spec.model.precision)}  # int8 with its recipe
    blob = json.dumps({"data": dump["data"], "model": model, "evaluate": evaluate}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _path(spec: Spec, fingerprint: str, split: str) -> Path | None:
    root = spec.runs_root()
    if "://" in root:
        return None
    key = scores_digest(spec)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{fingerprint}-{split}-{key}")
    return Path(root) / "_cache" / "scores" / f"{safe}.json"


def scored(spec: Spec, data: DomainData, model_path: str, split: str) -> tuple[Evaluation, bool]:
    """(the evaluation of `model_path` on `split`, whether it came from the cache)."""
    fingerprint = model_fingerprint(model_path)
    path = _path(spec, fingerprint, split)
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text())
            return Evaluation(per_query=saved.pop("per_query"), **{k: saved[k] for k in (
                "split", "model", "fingerprint", "metrics", "num_queries", "seconds")}), True
        except (ValueError, KeyError, TypeError) as exc:  # a torn write: score again
            log.warning("ignoring the cached scores %s (%s)", path, exc)
    result = evaluate_model(spec, data, model_path, split)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**result.summary(), "seconds": result.seconds, "per_query": result.per_query}))
        os.replace(tmp, path)
    return result, False
