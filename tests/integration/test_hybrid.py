"""Hybrid serving through Qdrant: `index.sparse: bm25` stores each document's BM25 vector
beside its dense one, `search.mode: hybrid` answers with the Query API's prefetch + fusion.

The embedded engine (Qdrant Edge) runs the whole path: re-index, search, sync. For a server,
qdrant-client's local mode stands in (no Qdrant server binary exists on this machine): a
collection is written through the same writer functions and searched through `vectune search`'s
own function, on `testdata.server_stand_in`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from testdata import server_stand_in
from vectune.errors import IndexingError, ModelError, SpecError
from vectune.index import collections as cols

pytestmark = pytest.mark.ray

N_DOCS = 160
HYBRID = {"index": {"sparse": "bm25", "batch_size": 32, "embed_batch_size": 64, "keep": 1, "verify_sample": 8},
          "search": {"mode": "hybrid"}, "model": {"max_seq_length": 64}}


@pytest.fixture(scope="module")
def sliced(make_slice, shm):
    spec = json.loads(json.dumps(HYBRID))
    spec["index"]["qdrant"] = {"path": str(shm / "qdrant")}
    return make_slice(shm / "slice", n_docs=N_DOCS, n_queries=20, spec=spec)


@pytest.fixture(scope="module")
def built(sliced, ray_local):
    from vectune.pipeline import reindex

    spec = sliced.load()
    return spec, reindex(spec, run_id="h1")


def test_hybrid_needs_the_sparse_vectors_in_the_spec(sliced):
    from vectune.spec import load_spec

    with pytest.raises(SpecError, match="index.sparse: bm25"):
        load_spec(sliced.spec_path, overrides={"index.sparse": "none"})


def test_points_carry_bm25_beside_dense_and_the_stamp_names_its_settings(built):
    from vectune.index import connect
    from vectune.ranking import engine_version

    spec, record = built
    store = connect(spec)
    try:
        live = cols.live_collection(store, cols.alias_name(spec))
        assert live == record["name"] and store.layout(live).sparse
        assert store.count(live, has_vector="bm25") == N_DOCS == store.count(live, has_vector="dense")
        stamp = cols.read_stamp(store, live)
        assert stamp["sparse"] == {"bm25": spec.bm25.model_dump(mode="json"),
                                   "engine": f"qdrant-edge-py {engine_version()}"}
    finally:
        store.close()


def test_search_serves_qdrants_fusion_of_dense_and_bm25(built, sliced):
    """`vectune search` in hybrid mode returns what the same engine's exact fusion returns for
    the same vectors (a scratch shard, `vectune.ranking`): the collection serves hybrid."""
    from vectune.embed import encode_texts, encoder_config
    from vectune.index import search
    from vectune.ranking import ScratchShard, bm25_vectors

    spec, record = built
    qid = sorted(sliced.qrels["test"])[0]
    text = sliced.queries[qid]
    result = search(spec, text, k=10)
    assert result["mode"] == "hybrid" and len(result["hits"]) == 10
    docs = [json.loads(line) for line in sliced.corpus_path.read_text(encoding="utf-8").splitlines()]
    texts = [f"{d.get('title') or ''} {d['text']}".strip() for d in docs]
    path = record["model"]["path"]
    dense = encode_texts(texts, encoder_config(spec, path, role="document", cache=False))
    query = encode_texts([text], encoder_config(spec, path, role="query", cache=False))
    with ScratchShard(dense.shape[1], True) as shard:
        shard.add([d["_id"] for d in docs], dense, bm25_vectors(spec.bm25, texts))
        (exact,) = shard.query(10, "hybrid", dense=query, sparse=bm25_vectors(spec.bm25, [text], query=True),
                               rrf_k=spec.search.rrf_k, prefetch=spec.search.prefetch)
    served = [h["doc_id"] for h in result["hits"]]
    assert len(set(served) & set(exact)) >= 9  # HNSW's dense half may swap a tail candidate
    assert served[0] == list(exact)[0]
    # and dense-only search of the same collection is still there
    dense_only = search(spec.derived(search=spec.search.model_copy(update={"mode": "dense"})), text, k=10)
    assert dense_only["mode"] == "dense" and [h["doc_id"] for h in dense_only["hits"]] != served


def test_other_bm25_settings_than_the_stamped_ones_are_refused(built, sliced):
    from vectune.index import search

    spec, _ = built
    other = spec.derived(bm25=spec.bm25.model_copy(update={"k": 2.0}))
    with pytest.raises(ModelError, match="bm25.k") as caught:
        search(other, "vitamin D and bone density", k=5)
    assert caught.value.exit_code == 2


def test_a_sync_writes_the_bm25_vectors_of_changed_documents(built, sliced):
    """A document edited to hold a word no other has: after an in-place sync, hybrid search for
    that word finds it first (its BM25 vector was rewritten with its dense one)."""
    from vectune.index import connect, search
    from vectune.pipeline import reindex

    spec, record = built
    lines = sliced.corpus_path.read_text(encoding="utf-8").splitlines()
    doc = json.loads(lines[7])
    doc["text"] = doc["text"] + " Zebrafish xylophonic telomerase."
    lines[7] = json.dumps(doc)
    sliced.corpus_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    synced = reindex(spec, run_id="h2")
    assert synced["mode"] == "incremental" and synced["updated"] == 1
    hits = search(spec, "xylophonic zebrafish", k=3)["hits"]
    assert hits[0]["doc_id"] == doc["_id"]
    store = connect(spec)
    try:
        assert store.count(synced["name"], has_vector="bm25") == N_DOCS
    finally:
        store.close()


def test_hybrid_on_a_server(sliced, monkeypatch):
    """The server path (qdrant-client's local mode standing in): points written by the writer's
    own `upsert_columns` with their BM25 vectors, searched by `vectune search`'s function and
    ranked by the gate's scoring through the index alike."""
    from vectune.embed import encode_texts, encoder_config, model_fingerprint, resolve_model
    from vectune.index import live
    from vectune.index.points import payload_fields
    from vectune.index.stage import vector_settings
    from vectune.index.store import layout
    from vectune.index.writer import upsert_columns

    spec = sliced.load().derived()
    store = server_stand_in()
    path = resolve_model(spec.model.base, spec.base_dir)
    docs = [json.loads(line) for line in sliced.corpus_path.read_text(encoding="utf-8").splitlines()][:60]
    texts = [f"{d.get('title') or ''} {d['text']}".strip() for d in docs]
    vectors = encode_texts(texts, encoder_config(spec, path, role="document", cache=False))
    stamp = {**vector_settings(spec, model_fingerprint(path)), "model_path": path, "dimension": 384,
             "state": "ready"}
    store.create("slice__s1", layout(spec, 384, 6, sparse=True), stamp=stamp)
    columns = {"doc_id": np.asarray([d["_id"] for d in docs], dtype=object), "embedding": vectors,
               "text": np.asarray(texts, dtype=object), "title": np.asarray([d.get("title", "") for d in docs], dtype=object),
               "text_hash": np.asarray(["0" * 16] * len(docs), dtype=object)}
    assert upsert_columns(store, "slice__s1", columns, batch_size=16, payload=payload_fields(spec),
                          bm25=spec.bm25) == len(docs)
    store.swap_alias(cols.alias_name(spec), "slice__s1")
    assert store.count("slice__s1", has_vector="bm25") == len(docs)
    monkeypatch.setattr(live, "connect", lambda s: _Unclosed(store))
    target = docs[5]
    word = target["title"].split()[0]
    result = live.search(spec, target["title"], k=5)
    assert result["mode"] == "hybrid" and result["hits"][0]["doc_id"] == target["_id"], word
    # the server path of `evaluate.through: index`: the scoring ranker asks the collection the
    # way `vectune search` does
    from vectune.index import scoring

    queries = [d["title"] for d in docs[:5]]
    ranked = scoring._rank(store, spec, "slice__s1", "hybrid", [f"q{i}" for i in range(5)], queries, 5)
    for i, text in enumerate(queries):
        assert list(ranked[f"q{i}"]) == [h["doc_id"] for h in live.search(spec, text, k=5)["hits"]]
    store.create("slice__dense", layout(spec, 384, 6), stamp={**stamp, "sparse": None})
    store.swap_alias(cols.alias_name(spec), "slice__dense")
    with pytest.raises(IndexingError, match="holds no BM25 vectors"):
        live.search(spec, target["title"], k=5)
    store.close()


class _Unclosed:
    """The stand-in store, kept open across `search` calls (each call closes what it opened)."""

    def __init__(self, store):
        self._store = store

    def close(self) -> None:
        pass

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_the_gate_scores_through_the_collection_as_it_serves(built, sliced):
    """`evaluate.through: index`: the live hybrid collection ranks the split's queries through the
    Query API (HNSW, prefetch, fusion) about as the exact hybrid ranking does, and the base is
    ranked through a scoring collection built once, reused on the next call, never a version."""
    from vectune.data import DomainData
    from vectune.evaluate.stage import rank_modes, scored_runs
    from vectune.index import connect
    from vectune.index.scoring import SCORING, Scorable, rank_through_index
    from vectune.runs import base_model_path

    spec, record = built
    data = DomainData(spec)
    labels = data.labels("test")
    qids = sorted(labels.qrels)
    texts = [labels.queries[q] for q in qids]
    path = base_model_path(spec)
    exact = rank_modes(spec, data, path, qids, texts, 100)["hybrid"]
    live = rank_through_index(spec, data, "t1", [Scorable("champion", path, "hybrid", "live", record["name"])],
                              qids, texts, 100)["champion"]
    assert live["collection"] == record["name"] and live["built"] == 0
    through = scored_runs(spec, data, path, "test", {"hybrid": live["run"]}, served="hybrid", start=0.0,
                          through="index", collection=record["name"])
    ideal = scored_runs(spec, data, path, "test", {"hybrid": exact}, served="hybrid", start=0.0)
    assert through.through == "index" and through.summary()["collection"] == record["name"]
    assert through.metrics["ndcg@10"] == pytest.approx(ideal.metrics["ndcg@10"], abs=0.02)
    same_top = sum(next(iter(live["run"][q]), None) == max(exact[q], key=exact[q].get) for q in qids)
    assert same_top >= 0.9 * len(qids)

    first = rank_through_index(spec, data, "t1", [Scorable("base", path, "hybrid", SCORING)], qids, texts, 10)["base"]
    again = rank_through_index(spec, data, "t2", [Scorable("base", path, "hybrid", SCORING)], qids, texts, 10)["base"]
    assert first["built"] > 0 and again["built"] == 0 and again["collection"] == first["collection"]
    assert again["run"] == first["run"]
    store = connect(spec)
    try:
        assert store.read_stamp(first["collection"])["state"] == SCORING
        assert first["collection"] not in {v.name for v in cols.versions(store, spec)}  # no rollback target
        assert cols.live_collection(store, cols.alias_name(spec)) == record["name"]  # the alias never moved
    finally:
        store.close()
