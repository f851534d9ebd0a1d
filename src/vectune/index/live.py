"""The live collection, read-only: searching it with the model that built it, and the list
of versions behind `vectune collections`.

Model choice for a query (the vectors must come from the model the collection was built
with, or the scores mean nothing):

- by default, the model stamped on the live collection (its path and fingerprint);
- `model=` another model: allowed only when its fingerprint equals the stamp's, e.g. the
  same model copied elsewhere; a different model is refused (ModelError, exit 2)
  unless `force=True`.
"""

from __future__ import annotations

import os
from pathlib import Path

from vectune.runtime import WORKER_ENV
from vectune.embed import encode_texts, encoder_config, model_fingerprint, resolve_model
from vectune.errors import IndexingError, ModelError
from vectune.index import collections as cols
from vectune.index.engines import connect
from vectune.spec import Spec


def _live(store, spec: Spec) -> tuple[str, dict]:
    alias = cols.alias_name(spec)
    live = cols.live_collection(store, alias)
    if live is None:
        raise IndexingError(f"alias {alias!r} points at no collection yet: run `vectune reindex` first")
    stamp = cols.read_stamp(store, live)
    if stamp is None:
        raise IndexingError(f"{live} (behind alias {alias!r}) carries no vectune stamp: cannot tell its model")
    return live, stamp


def query_model(stamp: dict, model: str | None, *, force: bool = False) -> tuple[str, str]:
    """(model path, fingerprint) to embed queries with, checked against the stamp."""
    stamped_fp = stamp.get("model_fingerprint")
    if model is None:
        path = stamp.get("model_path") or ""
        if not str(stamped_fp).startswith("hub:") and not Path(path).is_dir():
            raise ModelError(f"the live collection was built with {path}, which is not on this machine; "
                             "pass --model with a copy of it")
        fp = model_fingerprint(path)
        if fp != stamped_fp and not force:
            raise ModelError(f"the model at {path} changed since it built the live collection (fingerprint {fp}, "
                             f"stamped {stamped_fp}); pass --model with the original, or --force")
        return path, fp
    path = resolve_model(model, Path.cwd())
    fp = model_fingerprint(path)
    if fp != stamped_fp and not force:
        raise ModelError(f"--model {model} (fingerprint {fp}) is not the model that built the live collection "
                         f"({stamp.get('model_path')}, fingerprint {stamped_fp}); its query vectors would not match "
                         "the documents. Leave out --model to use the stamped one, or pass --force")
    return path, fp


def search(spec: Spec, text: str, *, k: int = 10, model: str | None = None, force: bool = False) -> dict:
    """Embed `text` and return the `k` nearest documents behind the spec's alias."""
    if not text.strip():
        raise ModelError("the query text is empty")
    for key, value in WORKER_ENV.items():  # offline, no progress bars: this runs in the CLI process
        os.environ.setdefault(key, value)
    store = connect(spec)
    try:
        live, stamp = _live(store, spec)
        path, fp = query_model(stamp, model, force=force)
        # queries are embedded the way the collection's documents were (its stamped precision;
        # collections stamped before vectune recorded a precision were built in fp32)
        precision = stamp.get("precision") or "fp32"
        vector = encode_texts([text], encoder_config(spec, path, role="query", cache=False, precision=precision))[0]
        size, _ = cols.vector_params(store, live)
        if size != len(vector) or stamp.get("dimension") != size:
            raise ModelError(f"{live} (behind alias {cols.alias_name(spec)!r}) holds vectors of size {size} "
                             f"(stamped {stamp.get('dimension')}), but {path} embeds queries as {len(vector)}-d "
                             "vectors: this collection cannot be searched with this model")
        mode = spec.search.mode
        ef = (stamp.get("hnsw") or {}).get("ef")
        # the collection the alias resolved to, whose stamp chose the model: a swap meanwhile cannot mix them
        if mode == "hybrid":
            sparse, = query_bm25(spec, store, live, stamp, [text])
            hits = store.hybrid(live, vector.tolist(), sparse, k, ["doc_id", "title"], fusion=spec.search.fusion,
                                prefetch=max(spec.search.prefetch, k), ef=ef, rrf_k=spec.search.rrf_k)
        else:
            hits = store.search(live, vector.tolist(), k, ["doc_id", "title"], ef=ef)
    finally:
        store.close()
    return {
        "alias": cols.alias_name(spec), "collection": live, "query": text, "mode": mode,
        "model": {"path": path, "fingerprint": fp, "stamped": stamp.get("model_fingerprint"),
                  "precision": precision, "forced": fp != stamp.get("model_fingerprint")},
        "hits": [{"rank": i + 1, "doc_id": h.payload.get("doc_id"), "score": round(h.score, 6),
                  "title": h.payload.get("title", "")} for i, h in enumerate(hits)],
    }


def query_bm25(spec: Spec, store, live: str, stamp: dict, texts: list[str]) -> list:
    """The queries' BM25 vectors, made with the settings the collection's documents were: the
    spec's `bm25` section must be the one stamped on it (else the terms would not match)."""
    from vectune.index.points import sparse_identity
    from vectune.index.store import Sparse
    from vectune.ranking import bm25_vectors

    stamped = stamp.get("sparse")
    if not stamped or not store.layout(live).sparse:
        raise IndexingError(f"{live} (behind alias {cols.alias_name(spec)!r}) holds no BM25 vectors, so it cannot "
                            "serve search.mode: hybrid; re-index with index.sparse: bm25, or search with "
                            "--set search.mode=dense")
    wanted = sparse_identity(spec.derived(index=spec.index.model_copy(update={"sparse": "bm25"})))
    if stamped != wanted:
        changed = sorted(k for k in set(stamped.get("bm25", {})) | set(wanted["bm25"])
                         if stamped.get("bm25", {}).get(k) != wanted["bm25"].get(k))
        what = f"bm25.{', bm25.'.join(changed)}" if changed else f"the engine ({stamped.get('engine')} vs {wanted['engine']})"
        raise ModelError(f"{live} was indexed with other BM25 settings ({what} differ from the spec's): a query "
                         "tokenized differently would not match its vectors; re-index (`vectune reindex --full`) "
                         "or set the stamped values")
    return [Sparse(list(indices), list(values)) for indices, values in bm25_vectors(spec.bm25, texts, query=True)]


def serving_model(spec: Spec) -> dict | None:
    """The model stamped on the collection behind the spec's alias: {collection, run_id,
    path, fingerprint, sparse (it holds BM25 vectors)}; None when the alias serves nothing (yet)."""
    store = connect(spec)
    try:
        live = cols.live_collection(store, cols.alias_name(spec))
        stamp = cols.read_stamp(store, live) if live else None
        sparse = store.layout(live).sparse if stamp else False
    finally:
        store.close()
    if not stamp:
        return None
    return {"collection": live, "run_id": stamp.get("run_id"), "path": stamp.get("model_path"),
            "fingerprint": stamp.get("model_fingerprint"), "sparse": sparse}


def list_collections(spec: Spec) -> dict:
    """Every version of the spec's collection, newest first, and which one is live."""
    store = connect(spec)
    try:
        versions = cols.versions(store, spec)
        live = cols.live_collection(store, cols.alias_name(spec))
    finally:
        store.close()
    return {"alias": cols.alias_name(spec), "live": live, "collections": [v.to_dict() for v in versions]}
