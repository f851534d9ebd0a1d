"""Scoring models through the collections that serve them (`evaluate.through: index`).

The gate judges what readers would get: approximate (HNSW) search and, for `search.mode:
hybrid`, the engine's fusion of dense and BM25 candidates, through the Query API of the very
collection that would be promoted. So, for the evaluate stage of a run:

- the challenger (the run's tuned model) is scored through its own new version
  `<base>__<run id>`, built, indexed and verified now but left unserved (stamp state
  `candidate`); when the gate passes, the re-index stage verifies it again and moves the alias
  to it, without loading it again (`stage.construct`); when the gate refuses, it is dropped;
- the champion, when it is the live model, through the live collection as it is served now
  (dense-only if that collection holds no BM25 vectors);
- any other model (the base) through a scoring collection `<base>__score-<key>`, stamped
  `role: scoring` and kept across runs, keyed by the model's fingerprint, the corpus' sha256
  and the settings that decide its vectors and index: the next run scores through it again
  instead of rebuilding it. Scoring collections are not versions: `vectune collections`,
  retention and rollback never see them; the `SCORING_KEEP` most recently used stay.

This module ranks; `vectune.evaluate` turns the rankings into metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from vectune.data import DomainData
from vectune.embed import encode_texts, encoder_config, model_fingerprint
from vectune.errors import IndexingError
from vectune.index import collections as cols
from vectune.index.live import query_bm25
from vectune.index.stage import construct, stage_store, vector_settings
from vectune.index.store import Store, hnsw, target
from vectune.precision import resolved
from vectune.spec import Spec

log = logging.getLogger(__name__)

#: scoring collections of one base name kept (most recently used first)
SCORING_KEEP = 2
SCORING = "scoring"
CANDIDATE = "candidate"
LIVE = "live"


@dataclass
class Scorable:
    """A model to rank and where: `collection` None means "build it now" (`kind` candidate or
    scoring); `mode` is the one it is (or would be) served in."""

    role: str
    path: str
    mode: str
    kind: str  # CANDIDATE | SCORING | LIVE
    collection: str | None = None


def scoring_key(spec: Spec, data: DomainData, fingerprint: str) -> str:
    """What decides a scoring collection: the vectors (model, precision, prefixes, payloads,
    BM25 settings), the corpus and the HNSW index over them."""
    h = hnsw(spec, data.corpus.count)
    corpus = [data.corpus.sha256, data.corpus_reading]
    blob = json.dumps({"vectors": vector_settings(spec, fingerprint), "corpus": corpus,
                       "hnsw": [h.m, h.ef_construct, h.ef]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def scoring_name(spec: Spec, key: str) -> str:
    return f"{cols.base_name(spec)}{cols.SEP}score-{key}"


def rank_through_index(spec: Spec, data: DomainData, run_id: str, models: list[Scorable], query_ids: list[str],
                       query_texts: list[str], k: int) -> dict[str, dict]:
    """Each model's top-`k` per query, searched through its collection in its mode:
    role -> {"collection", "mode", "built" (seconds, or 0 when reused), "run": {qid: {doc: score}}}.

    Ray must be running (a collection to build streams the corpus through the encoder actors).
    The embedded engine's shards are opened by one owner actor for the whole call."""
    spec = resolved(spec, train=False)
    where = target(spec)
    store = stage_store(where, spec)
    out: dict[str, dict] = {}
    try:
        live = cols.live_collection(store, cols.alias_name(spec))
        for m in models:
            name, seconds = _collection(store, spec, data, run_id, m, live)
            out[m.role] = {"collection": name, "mode": m.mode, "built": seconds,
                           "run": _rank(store, spec, name, m.mode, query_ids, query_texts, k)}
            log.info("ranked %d queries of %s through %s (%s)", len(query_ids), m.role, name, m.mode)
    finally:
        store.close()
    return out


def drop_candidate(spec: Spec, run_id: str) -> str | None:
    """Drop the run's unserved candidate version (the gate refused its model); its name, or
    None when there is none. A version that is (or was) served is never dropped here."""
    from vectune.index.engines import connect

    name = cols.collection_name(spec, run_id)
    store = connect(spec)
    try:
        if not store.exists(name) or (store.read_stamp(name) or {}).get("state") != CANDIDATE:
            return None
        if cols.live_collection(store, cols.alias_name(spec)) == name:
            return None
        store.drop(name)
    finally:
        store.close()
    log.info("dropped %s: the gate refused its model", name)
    return name


def _collection(store: Store, spec: Spec, data: DomainData, run_id: str, m: Scorable,
                live: str | None) -> tuple[str, float]:
    """(the collection to rank `m` through, seconds spent building it)."""
    if m.kind == LIVE:
        if not m.collection:
            raise IndexingError(f"the {m.role} is the live model but no collection was named")
        return m.collection, 0.0
    model = {"path": m.path, "fingerprint": model_fingerprint(m.path)}  # what a build is stamped with
    if m.kind == CANDIDATE:
        name = cols.collection_name(spec, run_id)
        if name == live:  # this run's version is already promoted (a re-run of its evaluation): as served
            stamp = store.read_stamp(name) or {}
            if stamp.get("model_fingerprint") != model["fingerprint"]:
                raise IndexingError(f"{name} is live and was built from another model than this run's tuned one; "
                                    "use a new run id")
            return name, 0.0
        built = construct(store, spec, run_id, data, name, model, live=live, state=CANDIDATE)
        return name, 0.0 if built["reused"] else built["seconds"]
    key = scoring_key(spec, data, model["fingerprint"])
    name = scoring_name(spec, key)
    built = construct(store, spec, f"score-{key}", data, name, model, live=live, state=SCORING,
                      extra={"role": SCORING, "scoring_key": key, "used": cols.now()})
    _forget_old_scoring(store, spec, keep=name)
    return name, 0.0 if built["reused"] else built["seconds"]


def _forget_old_scoring(store: Store, spec: Spec, *, keep: str) -> None:
    base = cols.base_name(spec)
    found = []
    for name in store.collections():
        if name == keep or not name.startswith(base + cols.SEP):
            continue
        stamp = store.read_stamp(name) or {}
        if stamp.get("role") == SCORING and stamp.get("base") == base:
            found.append((stamp.get("used") or stamp.get("created") or "", name))
    for _, name in sorted(found, reverse=True)[SCORING_KEEP - 1:]:
        store.drop(name)
        log.info("dropped the scoring collection %s (least recently used)", name)


def _rank(store: Store, spec: Spec, name: str, mode: str, query_ids: list[str], query_texts: list[str],
          k: int) -> dict[str, dict[str, float]]:
    """{qid: {doc_id: score}}: the collection's answer to each query in `mode`, the way `vectune
    search` asks it (the stamped model and precision embed the queries; the stamped `ef`)."""
    stamp = store.read_stamp(name) or {}
    precision = stamp.get("precision") or "fp32"
    path = stamp.get("model_path")
    dense = encode_texts(list(query_texts), encoder_config(spec, path, role="query", precision=precision))
    ef = (stamp.get("hnsw") or {}).get("ef")
    sparse = query_bm25(spec, store, name, stamp, list(query_texts)) if mode == "hybrid" else None
    run: dict[str, dict[str, float]] = {}
    for i, qid in enumerate(query_ids):
        vector = dense[i].tolist()
        if sparse is not None:
            hits = store.hybrid(name, vector, sparse[i], k, ["doc_id"], fusion=spec.search.fusion,
                                prefetch=max(spec.search.prefetch, k), ef=ef, rrf_k=spec.search.rrf_k)
        else:
            hits = store.search(name, vector, k, ["doc_id"], ef=ef)
        run[qid] = {str(h.payload["doc_id"]): float(h.score) for h in hits}
    return run


__all__ = ["CANDIDATE", "LIVE", "SCORING", "Scorable", "drop_candidate", "rank_through_index"]
