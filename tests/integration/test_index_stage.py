"""The re-index stage for real: a 240-document SciFact slice, the packaged model, a local
Ray and the embedded engine (Qdrant Edge) on tmpfs."""

from __future__ import annotations


import numpy as np
import pytest
import yaml

from vectune.errors import IndexingError
from vectune.index import collections as cols
from vectune.index.points import point_id
from vectune.index.store import auto_ef

pytestmark = pytest.mark.ray

N_DOCS = 240
INDEX = {"batch_size": 32, "embed_batch_size": 64, "keep": 1, "verify_sample": 16}


@pytest.fixture(scope="module")
def sliced(make_slice, shm):
    return make_slice(shm / "slice", n_docs=N_DOCS, n_queries=40,
                      spec={"model": {"max_seq_length": 64},
                            "index": {**INDEX, "qdrant": {"path": str(shm / "qdrant")}}})


@pytest.fixture(scope="module")
def spec(sliced):
    return sliced.load()


@pytest.fixture(scope="module")
def first(spec, ray_local):
    """Run a1, indexed with the base model, live."""
    from vectune.pipeline import reindex

    return reindex(spec, run_id="a1")


def _client(spec):
    from vectune.index import connect

    return connect(spec)


def test_reindex_builds_verifies_stamps_and_promotes(spec, sliced, first):
    from vectune.runs import Run

    assert first["name"] == "slice__a1" and first["alias"] == "slice"
    assert first["points"] == N_DOCS and first["written"] == N_DOCS
    assert first["verified"]["ids_checksum"] and first["verified"]["min_cosine"] > 0.999
    run = Run.open(spec, "a1")
    assert run.manifest["collection"]["name"] == "slice__a1"
    assert run.manifest["stages"]["reindex"]["status"] == "done"
    client = _client(spec)
    try:
        assert cols.live_collection(client, "slice") == "slice__a1"
        stamp = cols.read_stamp(client, "slice__a1")
        assert stamp["state"] == "ready" and stamp["dimension"] == 384 and stamp["spec_hash"] == spec.digest()
        assert stamp["model_fingerprint"] == first["model"]["fingerprint"]
        assert stamp["corpus_count"] == N_DOCS and stamp["promoted"]
        # `ef: auto` (the default) is stamped resolved for the collection's size: what every search uses
        assert spec.index.hnsw.ef == "auto"
        assert stamp["hnsw"] == {"m": spec.index.hnsw.m, "ef_construct": spec.index.hnsw.ef_construct,
                                 "ef": auto_ef(N_DOCS)} == {"m": 16, "ef_construct": 100, "ef": 256}
        ids = {r.payload["doc_id"] for page in client.scroll("slice__a1", ["doc_id"]) for r in page}
        assert ids == set(sliced.doc_ids)
        layout = client.layout("slice__a1")
        assert (layout.size, layout.distance, layout.dense_name) == (384, "cosine", "dense")
        record = client.version_record("slice__a1")  # Edge: the index was built after the load, and recorded
        assert record["index"]["points"] == N_DOCS and first["index"]["points"] == N_DOCS
        assert first["timings"]["index"] >= 0
    finally:
        client.close()


def test_search_finds_the_labelled_documents(spec, sliced, first):
    from vectune.embed import encode_texts, encoder_config
    from vectune.index import search

    qrels = sliced.qrels["test"]
    qids = sorted(qrels)
    client = _client(spec)
    try:
        vectors = encode_texts([sliced.queries[q] for q in qids],
                               encoder_config(spec, first["model"]["path"], role="query", cache=False))
        hit = 0
        for qid, vec in zip(qids, vectors):
            top = client.search("slice", vec.tolist(), 10, ["doc_id"])
            hit += bool({p.payload["doc_id"] for p in top} & set(qrels[qid]))
    finally:
        client.close()
    assert hit / len(qids) >= 0.8  # MiniLM finds a labelled abstract in the top 10 for most claims
    qid = qids[0]
    result = search(spec, sliced.queries[qid], k=N_DOCS)
    ranked = [h["doc_id"] for h in result["hits"]]
    assert result["collection"] == "slice__a1" and len(ranked) == N_DOCS
    assert set(qrels[qid]) & set(ranked[:20])
    assert result["hits"][0]["score"] >= result["hits"][-1]["score"]


# Hung once in the full suite (00:16, 2026-11-29): the re-run after the injected failure
# waited for ever with one idle encoder actor; it passed alone before and after. Opt-in until
# the resume path on the embedded engine is understood; the SIGKILL test in
# test_index_cli.py still covers kill-and-rerun.
@pytest.mark.slow
def test_failure_midway_keeps_the_alias_and_a_rerun_completes_without_duplicates(spec, first, monkeypatch):
    from vectune import _faults
    from vectune.pipeline import reindex
    from vectune.runs import Run

    _faults.switch(**{"index.upsert": {"after": 3}})
    with pytest.raises(IndexingError, match="injected failure after 3 upsert batches"):
        reindex(spec, run_id="a2", full=True)
    client = _client(spec)
    try:
        assert cols.live_collection(client, "slice") == "slice__a1"  # never the unfinished one
        assert cols.read_stamp(client, "slice__a2")["state"] == "building"
        partial = client.count("slice__a2")
        # some of the corpus, not all of it (the owner may apply one more request already in
        # flight from the other write task; blocks need not be multiples of the batch size)
        assert 0 < partial < N_DOCS
    finally:
        client.close()
        _faults.clear()  # even when an assertion above fails: later tests must not inherit the fault
    run = Run.open(spec, "a2")
    assert run.manifest["stages"]["reindex"]["status"] == "failed"
    assert run.manifest["collection"]["state"] == "failed"

    _faults.clear()
    again = reindex(spec, run_id="a2")  # resumes the full build of a2 without --full
    assert again["resumed"] is True and again["points"] == N_DOCS and again["previous"] == "slice__a1"
    assert again["model_source"].startswith("resuming run a2")
    client = _client(spec)
    try:
        assert cols.live_collection(client, "slice") == "slice__a2"
        ids = [r.id for page in client.scroll("slice__a2") for r in page]
        assert len(ids) == len(set(ids)) == N_DOCS
    finally:
        client.close()


def test_retention_then_rollback_restores_the_previous_collection(spec, first):
    from vectune.index import list_collections, search
    from vectune.pipeline import reindex, rollback

    reindex(spec, run_id="a2", full=True)  # no-op when the test above ran; builds it otherwise
    third = reindex(spec, run_id="a3", full=True)
    assert third["previous"] == "slice__a2"
    listed = list_collections(spec)
    assert listed["live"] == "slice__a3"
    assert [c["name"] for c in listed["collections"]] == ["slice__a3", "slice__a2"]  # keep=1: a1 deleted
    assert "slice__a1" in third["deleted_collections"]

    back = rollback(spec)
    assert (back["previous"], back["live"]) == ("slice__a3", "slice__a2")
    assert search(spec, "cancer", k=3)["collection"] == "slice__a2"
    states = {c["name"]: (c["state"], c["live"]) for c in list_collections(spec)["collections"]}
    assert states == {"slice__a3": ("rolled_back", False), "slice__a2": ("ready", True)}
    with pytest.raises(IndexingError, match="no previous verified collection"):
        rollback(spec)


def test_unreachable_server_fails_fast_and_leaves_the_alias(spec, sliced, first, shm):
    from vectune.pipeline import reindex
    from vectune.spec import load_spec

    mapping = yaml.safe_load(sliced.spec_path.read_text())
    mapping["index"]["qdrant"] = {"url": "http://127.0.0.1:1", "retries": 1, "timeout": 2}
    path = sliced.root / "spec-server.yaml"
    path.write_text(yaml.safe_dump(mapping))
    server = load_spec(path)
    client = _client(spec)
    live = cols.live_collection(client, "slice")
    before = set(client.collections())
    client.close()
    with pytest.raises(IndexingError, match="cannot reach Qdrant at http://127.0.0.1:1 after 2 attempt"):
        reindex(server, run_id="u1")
    client = _client(spec)
    try:
        assert cols.live_collection(client, "slice") == live
        assert set(client.collections()) == before
    finally:
        client.close()


def test_verification_rejects_wrong_vectors_missing_and_foreign_points(spec, first):
    from vectune.data import DomainData
    from vectune.index.store import Layout
    from vectune.index.verify import verify

    data = DomainData(spec)
    path = first["model"]["path"]
    client = _client(spec)
    try:
        source = cols.live_collection(client, "slice")
        client.create("slice__bad", Layout(size=384, distance="cosine"), stamp={})
        points = [r for page in client.scroll(source, ["doc_id", "title", "text", "text_hash"]) for r in page]
        ids = [p.id for p in points]
        stored = {r.id: r.vector for r in client.retrieve(source, ids, vectors=True)}
        vectors = np.asarray([stored[i] for i in ids], dtype=np.float32)
        client.upsert("slice__bad", ids, vectors, [p.payload for p in points])
        assert verify(client, "slice__bad", spec, data, path, seed="x")["points"] == N_DOCS

        rng = np.random.default_rng(0)
        client.upsert("slice__bad", ids, rng.normal(size=(len(ids), 384)).astype(np.float32),
                      [p.payload for p in points])
        with pytest.raises(IndexingError, match="does not match a fresh embedding"):
            verify(client, "slice__bad", spec, data, path, seed="x")

        doc = points[0].payload["doc_id"]
        client.delete("slice__bad", [point_id(doc)])
        with pytest.raises(IndexingError, match=f"holds {N_DOCS - 1} points but the corpus has {N_DOCS}"):
            verify(client, "slice__bad", spec, data, path, seed="x")

        client.upsert("slice__bad", [point_id("not-a-doc")], np.ones((1, 384), dtype=np.float32),
                      [{"doc_id": "not-a-doc"}])
        with pytest.raises(IndexingError, match="ids do not match the corpus"):
            verify(client, "slice__bad", spec, data, path, seed="x")
    finally:
        client.drop("slice__bad")
        client.close()


def test_a_driver_without_the_model_verifies_in_a_ray_task(spec, first, monkeypatch):
    """A driver that never loaded the model (a large re-index encodes in actors) has the sample's
    fresh embeddings and the model's dimension computed in a Ray task: the same vectors, so a
    good collection passes and wrong vectors are refused."""
    from vectune.data import DomainData
    from vectune.embed import apart as apart_mod
    from vectune.embed import encoder_config
    from vectune.index import verify as verify_mod
    from vectune.index.store import Layout

    apart = []
    real = apart_mod._task
    monkeypatch.setattr(apart_mod, "here", lambda encoder=None: False)  # as in a driver without torch
    monkeypatch.setattr(apart_mod, "_task", lambda fn, gpus: apart.append(fn.__name__) or real(fn, gpus))
    data = DomainData(spec)
    path = first["model"]["path"]
    client = _client(spec)
    try:
        source = cols.live_collection(client, "slice")
        assert verify_mod.verify(client, source, spec, data, path, seed="y")["points"] == N_DOCS
        assert apart == ["_encode"]
        client.create("slice__wrong", Layout(size=384, distance="cosine"), stamp={})
        points = [r for page in client.scroll(source, ["doc_id"]) for r in page]
        client.upsert("slice__wrong", [p.id for p in points],
                      np.random.default_rng(1).normal(size=(len(points), 384)).astype(np.float32),
                      [p.payload for p in points])
        with pytest.raises(IndexingError, match="does not match a fresh embedding"):
            verify_mod.verify(client, "slice__wrong", spec, data, path, seed="y")
        assert apart == ["_encode"] * 2
        # the model folder's configs state the dimension: no task loads the model for it
        cfg = encoder_config(spec, path, role="document", cache=False)
        assert apart_mod.dimension(apart_mod.Encoder(cfg)) == 384 and apart == ["_encode"] * 2
    finally:
        client.drop("slice__wrong")
        client.close()


def test_an_int8_collection_is_stamped_and_searched_in_int8(spec, sliced, first):
    """model.precision int8 builds and verifies a collection stamped int8 (its own identity);
    `vectune search` then embeds queries in int8 because the stamp says so, even with a spec
    that says fp32, and the query vector is the int8 one (a vector from the other precision
    would score the top hit differently)."""
    pytest.importorskip("onnxruntime")
    from vectune.embed import encode_texts, encoder_config
    from vectune.index import search
    from vectune.pipeline import reindex

    int8_spec = spec.derived(model=spec.model.model_copy(update={"precision": "int8"}))
    built = reindex(int8_spec, run_id="i8")
    assert built["points"] == N_DOCS and built["verified"]["min_cosine"] > 0.999
    qid = sorted(sliced.qrels["test"])[0]
    text = sliced.queries[qid]
    result = search(spec, text, k=5)  # the spec says fp32; the stamp says int8
    assert result["model"]["precision"] == "int8" and result["collection"] == "slice__i8"
    vectors = {p: encode_texts([text], encoder_config(spec, first["model"]["path"], role="query", cache=False,
                                                      precision=p))[0] for p in ("int8", "fp32")}
    assert float(vectors["int8"] @ vectors["fp32"]) < 0.99999  # the two precisions do differ
    client = _client(spec)  # the embedded engine: one client at a time in this process
    try:
        stamp = cols.read_stamp(client, "slice__i8")
        assert stamp["precision"] == "int8" and cols.live_collection(client, "slice") == "slice__i8"
        top = client.search("slice", vectors["int8"].tolist(), 1)[0]
        assert result["hits"][0]["score"] == pytest.approx(top.score, abs=1e-6)
    finally:
        client.close()


@pytest.mark.parametrize("corpus", ["slice", "scifact"])
def test_every_encoder_actor_gets_an_equal_share_of_the_corpus(spec, ray_local, corpus):
    """The re-index's corpus rows reach the encoder pool in blocks of one Ray batch each (the pool
    gathers whole blocks until they hold a batch: one block a task), a multiple of the actor
    count of them: each actor takes the same number of equal tasks. Before, SciFact's 6 blocks of
    864 were under the batch of 1,024, the pool took them in pairs (3 tasks for 2 actors), and one
    actor encoded 2/3 of the corpus while the other sat idle for the last third. The slice (240
    documents, batches of at most 44: blocks of 40 before) fails on that layout; all of SciFact's
    5,183 (read and hashed, not encoded) checks the shipped batch size.

    The blocks are what is asserted, not which actor took which: that also depends on when each
    actor came up, which a loaded machine decides."""
    from testdata import SCIFACT

    from vectune.data import DomainData
    from vectune.embed.actors import actor_pool, fit_actors
    from vectune.index.stage import corpus_rows

    plan = fit_actors(2.0, 0.0, None)  # the 2-CPU local Ray's pool: 2 actors
    assert plan.actors == 2
    if corpus == "slice":
        spec = spec.derived(index=spec.index.model_copy(update={"embed_batch_size": 44}))
        count = N_DOCS
    else:
        data = spec.data.model_copy(update={"root": str(SCIFACT)})
        spec = spec.derived(data=data, index=spec.index.model_copy(update={"embed_batch_size": 1024}))
        count = 5183
    ds, batch, blocks = corpus_rows(spec, DomainData(spec), plan)
    assert blocks % plan.actors == 0 and batch <= spec.index.embed_batch_size

    class Blocks:  # stands in for the encoder pool, one block a call: the blocks as the pool gets them
        def __call__(self, rows):
            return {"rows": np.full(1, len(rows["doc_id"]))}

    taken = ds.map_batches(Blocks, batch_size=None, batch_format="numpy", compute=actor_pool(plan.actors),
                           num_cpus=plan.cpus)
    sizes = [int(n) for b in taken.iter_batches(batch_size=None, batch_format="numpy") for n in b["rows"]]
    assert sum(sizes) == count
    # every block holds a batch (so the pool, which gathers blocks until they hold one, sends one a task)
    assert len(sizes) == blocks and all(batch <= n < 2 * batch for n in sizes), (sizes, batch, blocks)
