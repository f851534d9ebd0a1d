"""Scores of a model on a split, kept across runs: `<runs>/_cache/scores/`, keyed by the
model's fingerprint, the split and every setting that changes the scores (data, model,
evaluate sections). The champion of the gate (the live or the base model) is scored once,
not on every run that challenges it. BM25's scores are kept the same way, keyed by the data
(the spec's section and the corpus' sha256), the `bm25` section, the engine's version and
the split: a second run does not build its index again."""

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
    """What changes a model's scores on a split: the data and model sections, of the evaluate
    section its metrics and depth, the fusion and BM25 settings hybrid ranks with and the
    engine's version (not the gate, nor how the work is spread, nor which mode is served:
    every mode is kept)."""
    import hashlib

    from vectune.embed.encoder import precision_identity
    from vectune.precision import resolved

    from vectune.ranking import engine_version

    spec = resolved(spec, train=False)  # the digest keys the resolved precision, never `auto`
    dump = spec.canonical()
    evaluate = {k: dump["evaluate"][k] for k in ("metrics", "k")}
    model = dump["model"] | {"precision": precision_identity(spec.model.precision)}  # int8 with its recipe
    # every served mode is ranked: hybrid's fusion and its BM25 half change those scores
    search = {k: v for k, v in dump["search"].items() if k != "mode"}
    blob = json.dumps({"data": dump["data"], "model": model, "evaluate": evaluate, "search": search,
                       "bm25": dump["bm25"], "engine": f"qdrant-edge-py {engine_version()}"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _path(spec: Spec, fingerprint: str, split: str) -> Path | None:
    return _file(spec, f"{fingerprint}-{split}-{scores_digest(spec)}")


def _file(spec: Spec, name: str) -> Path | None:
    """`<runs>/_cache/scores/<name>.json`; None where the runs live behind a URI (no cache)."""
    root = spec.runs_root()
    if "://" in root:
        return None
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return Path(root) / "_cache" / "scores" / f"{safe}.json"


def _load(path: Path | None) -> Evaluation | None:
    if path is None or not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        return Evaluation(per_query=saved.pop("per_query"), mode=saved.get("mode", "dense"),
                          modes=saved.get("modes_full") or {}, **{k: saved[k] for k in (
                              "split", "model", "fingerprint", "metrics", "num_queries", "seconds")})
    except (ValueError, KeyError, TypeError) as exc:  # a torn write: score again
        log.warning("ignoring the cached scores %s (%s)", path, exc)
        return None


def _save(path: Path | None, result: Evaluation) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**result.summary(), "seconds": result.seconds, "per_query": result.per_query,
                               "modes_full": result.modes}))
    os.replace(tmp, path)


def scored(spec: Spec, data: DomainData, model_path: str, split: str) -> tuple[Evaluation, bool]:
    """(the evaluation of `model_path` on `split`, whether it came from the cache)."""
    fingerprint = model_fingerprint(model_path)
    path = _path(spec, fingerprint, split)
    cached = _load(path)
    if cached is not None and spec.search.mode in cached.modes:
        return cached.in_mode(spec.search.mode), True
    result = evaluate_model(spec, data, model_path, split)
    _save(path, result)
    return result, False


def bm25_digest(spec: Spec, data: DomainData) -> str:
    """What changes BM25's scores on a split: the data (the spec's section and the corpus'
    content), the `bm25` section, the engine that tokenizes and scores, and of the evaluate
    section its metrics and depth."""
    import hashlib

    from vectune.ranking import engine_version

    dump = spec.canonical()
    blob = json.dumps({"data": dump["data"], "corpus": data.corpus.sha256, "bm25": dump["bm25"],
                       "engine": f"qdrant-edge-py {engine_version()}",
                       "evaluate": {k: dump["evaluate"][k] for k in ("metrics", "k")}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def bm25_scored(spec: Spec, data: DomainData, split: str) -> tuple[Evaluation, bool]:
    """(BM25's evaluation on `split`, whether it came from the cache)."""
    from vectune.evaluate.bm25 import evaluate_bm25

    digest = bm25_digest(spec, data)
    path = _file(spec, f"bm25-{split}-{digest}")
    cached = _load(path)
    if cached is not None:
        return cached, True
    result = evaluate_bm25(spec, data, split, fingerprint=f"bm25-{digest}")
    _save(path, result)
    return result, False
