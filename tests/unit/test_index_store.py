"""The store interface, the same tests on both engines: Qdrant Edge in a real shard folder, and a
server, for which qdrant-client's local mode stands in (`testdata.server_stand_in`: no Qdrant
server binary exists on this machine, and local mode emulates the server's API in-process; it is
used only as that stand-in). Dense and BM25 sparse vectors, fused queries, the alias, stamps."""

from __future__ import annotations

import numpy as np
import pytest
from testdata import server_stand_in

from vectune.errors import IndexingError
from vectune.index.points import point_id
from vectune.index.store import DENSE, SPARSE, Hnsw, Layout, Sparse, Target

DOCS = {
    "d1": "Aspirin lowers the risk of heart attack in older adults.",
    "d2": "Vitamin C does not cure the common cold.",
    "d3": "Adults need seven hours of sleep each night.",
    "d4": "Coffee drinkers live longer in cohort studies.",
    "d5": "Low dose aspirin and bleeding risk in the elderly.",
    "d6": "Cold water swimming and the immune system.",
}


def _small_shards(root: str, per: int):
    """An EdgeStore whose every version holds at most `per` points a shard (`index.shard_points`):
    the interface's tests then run across several shards."""
    import dataclasses

    from vectune.index.edge import EdgeStore

    class SmallShards(EdgeStore):
        def create(self, name, layout, *, stamp):
            super().create(name, dataclasses.replace(layout, shard_points=per), stamp=stamp)

    return SmallShards(Target(path=root))


@pytest.fixture(params=["edge", "edge-shards", "server"])
def store(request, tmp_path):
    if request.param == "edge":
        from vectune.index.edge import EdgeStore

        s = EdgeStore(Target(path=str(tmp_path / "qdrant")))
    elif request.param == "edge-shards":  # 6 documents: shards of 4 and 2
        s = _small_shards(str(tmp_path / "qdrant"), 4)
    else:
        s = server_stand_in()
    yield s
    s.close()


def _vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _bm25():
    from qdrant_edge import Bm25

    return Bm25()


def _fill(store, name: str, *, sparse: bool = False, stamp: dict | None = None) -> tuple[list[str], np.ndarray]:
    store.create(name, Layout(size=8, distance="cosine", sparse=sparse), stamp=stamp or {"base": "docs"})
    ids = [point_id(d) for d in DOCS]
    vectors = _vectors(len(DOCS))
    bm25 = _bm25()
    sparse_vectors = ([Sparse(list(v.indices), list(v.values)) for v in map(bm25.embed_document, DOCS.values())]
                      if sparse else None)
    payloads = [{"doc_id": d, "text": t} for d, t in DOCS.items()]
    assert store.upsert(name, ids, vectors, payloads, sparse_vectors) == len(DOCS)
    return ids, vectors


def test_versions_are_created_listed_stamped_and_dropped(store):
    store.create("docs__r1", Layout(size=8, distance="dot", sparse=True), stamp={"base": "docs", "state": "building"})
    store.create("docs__r2", Layout(size=8, distance="cosine"), stamp={"base": "docs"})
    assert store.collections() == ["docs__r1", "docs__r2"]
    assert store.exists("docs__r1") and not store.exists("docs__r3")
    layout = store.layout("docs__r1")
    assert (layout.size, layout.distance, layout.sparse, layout.dense_name) == (8, "dot", True, DENSE)
    assert not store.layout("docs__r2").sparse
    assert store.read_stamp("docs__r1") == {"base": "docs", "state": "building"}
    store.write_stamp("docs__r1", {"base": "docs", "state": "ready", "nested": {"a": [1, 2]}})
    assert store.read_stamp("docs__r1") == {"base": "docs", "state": "ready", "nested": {"a": [1, 2]}}
    store.drop("docs__r1")
    assert store.collections() == ["docs__r2"]


def test_points_are_written_counted_read_and_deleted(store):
    ids, vectors = _fill(store, "c")
    assert store.count("c") == len(DOCS)
    assert store.count("c", has_vector=DENSE) == len(DOCS)
    assert store.count("c", has_field="doc_id") == len(DOCS) and store.count("c", has_field="title") == 0
    got = {r.id: r for r in store.retrieve("c", [ids[1], ids[0], point_id("missing")], ["doc_id"], vectors=True)}
    assert set(got) == {ids[0], ids[1]} and got[ids[1]].payload == {"doc_id": "d2"}  # only the fields asked for
    assert np.allclose(got[ids[1]].vector, vectors[1], atol=1e-6)
    assert store.retrieve("c", [ids[0]])[0].vector is None  # no vector unless asked
    # the same ids again overwrite: one point per id
    store.upsert("c", ids[:2], vectors[:2], [{"doc_id": "d1", "text": "new"}, {"doc_id": "d2", "text": "new"}])
    assert store.count("c") == len(DOCS)
    assert store.retrieve("c", [ids[0]], ["text"])[0].payload == {"text": "new"}
    store.delete("c", ids[:2])
    store.delete("c", ids[:2])  # idempotent
    assert store.count("c") == len(DOCS) - 2


def test_scroll_streams_bounded_pages_of_every_point(store):
    ids, _ = _fill(store, "c")
    pages = list(store.scroll("c", ["doc_id"], page=4))
    assert [len(p) for p in pages] == [4, 2]
    assert sorted(r.id for p in pages for r in p) == sorted(ids)
    assert {r.payload["doc_id"] for p in pages for r in p} == set(DOCS)
    assert all(r.payload == {} for p in store.scroll("c", None, page=10) for r in p)  # ids only


def test_the_alias_moves_in_one_step_and_search_follows_it(store):
    ids, vectors = _fill(store, "docs__a")
    store.create("docs__b", Layout(size=8, distance="cosine"), stamp={"base": "docs"})
    store.upsert("docs__b", ids[:1], vectors[:1], [{"doc_id": "only"}])
    assert store.alias("docs") is None
    assert store.swap_alias("docs", "docs__a") is None
    hits = store.search("docs", vectors[2], 3, ["doc_id"], ef=64)
    assert hits[0].id == ids[2] and hits[0].payload == {"doc_id": "d3"}
    assert hits[0].score == pytest.approx(1.0, abs=1e-5) and hits[0].score >= hits[1].score >= hits[2].score
    assert store.swap_alias("docs", "docs__b") == "docs__a"
    assert store.alias("docs") == "docs__b"
    assert [h.payload["doc_id"] for h in store.search("docs", vectors[2], 3, ["doc_id"])] == ["only"]
    assert store.swap_alias("docs", "docs__b") == "docs__b"  # already there: nothing to do


@pytest.mark.parametrize("fusion", ["rrf", "dbsf"])
def test_hybrid_query_fuses_dense_and_bm25_candidates_in_the_engine(store, fusion):
    ids, vectors = _fill(store, "c", sparse=True)
    query = _bm25().embed_query("aspirin risk")
    sparse = Sparse(list(query.indices), list(query.values))
    # the dense query points at d4 (coffee); BM25 ranks the two aspirin documents first
    hits = store.hybrid("c", vectors[3], sparse, 3, ["doc_id"], fusion=fusion, prefetch=4)
    found = [h.payload["doc_id"] for h in hits]
    assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score
    # both lists reach the top 3: the dense query's best match and a document BM25 ranks first
    assert "d4" in found and {"d1", "d5"} & set(found)
    assert all(h.id in ids for h in hits)
    if fusion == "rrf":  # 1/(k + rank) summed over the two lists, k=60: at most 2/61
        assert hits[0].score <= 2 / 61 + 1e-6
    with pytest.raises(ValueError, match="fusion"):
        store.hybrid("c", vectors[0], sparse, 3, fusion="max")
    store.create("dense_only", Layout(size=8, distance="cosine"), stamp={})
    with pytest.raises(IndexingError, match=f"no `{SPARSE}` sparse vector"):
        store.hybrid("dense_only", vectors[0], sparse, 3)


def test_the_index_is_built_after_the_load_and_searches_the_same(store):
    ids, vectors = _fill(store, "c")
    before = [h.id for h in store.search("c", vectors[0], 3)]
    built = store.build_index("c", Hnsw(m=16, ef_construct=100, ef=32))
    assert built["m"] == 16 and built["ef_construct"] == 100 and built["seconds"] >= 0
    assert [h.id for h in store.search("c", vectors[0], 3)] == before
    assert store.count("c") == len(DOCS)


def test_an_embedded_shard_is_checked_by_a_child_process_and_never_opened_here(tmp_path):
    """`verify_ids(apart=True)` (the untouched-file sync's check, which runs without Ray) reads
    the shard in a child process: Edge maps a shard into the process that opens it, so the
    driver would carry its pages. The child's answer is the same check: a collection whose ids
    are not the corpus's is still refused, with the collection named."""
    from types import SimpleNamespace

    from vectune.index.edge import EdgeStore
    from vectune.index.points import id_checksum
    from vectune.index.verify import checksum_of, checksum_text, verify_ids

    store = EdgeStore(Target(path=str(tmp_path / "qdrant")))
    try:
        _fill(store, "v1")
        store.close()  # what the sync's probe has done before: read records, opened no shard
        corpus = SimpleNamespace(corpus=SimpleNamespace(count=len(DOCS), ids=set(DOCS)))
        points, checksum = verify_ids(store, "v1", corpus, apart=True)
        assert points == len(DOCS) and checksum == id_checksum(point_id(d) for d in DOCS)
        assert store._shards == {}  # nothing mapped in this process
        # what a verified stamp recorded stands in for the corpus (an untouched file is not parsed
        # again): `unread` has no corpus to read, and the check still refuses other ids
        unread = SimpleNamespace()
        assert verify_ids(store, "v1", unread, apart=True, expected=(len(DOCS), checksum)) == (points, checksum)
        with pytest.raises(IndexingError, match="ids do not match"):
            verify_ids(store, "v1", unread, apart=True, expected=(len(DOCS), (len(DOCS), checksum[1] + 1)))
        assert checksum_of(checksum_text(checksum)) == checksum and checksum_of(None) is None
        other = SimpleNamespace(corpus=SimpleNamespace(count=len(DOCS), ids={*list(DOCS)[:-1], "elsewhere"}))
        with pytest.raises(IndexingError, match="v1 holds 6 points whose ids do not match"):
            verify_ids(store, "v1", other, apart=True)
        fewer = SimpleNamespace(corpus=SimpleNamespace(count=len(DOCS) + 1, ids=set(DOCS)))
        with pytest.raises(IndexingError, match="v1 holds 6 points but the corpus has 7"):
            verify_ids(store, "v1", fewer, apart=True)
        assert verify_ids(store, "v1", corpus) == (points, checksum)  # in this process, the same answer
    finally:
        store.close()


def test_the_child_check_never_reruns_the_callers_script_and_a_dead_child_is_an_error(tmp_path, monkeypatch):
    """A user's script calling vectune without an `if __name__ == "__main__"` guard: the shard
    check's child must not run that script again (multiprocessing's spawn does: the script's
    work twice, or a crash). A child that dies before answering is an IndexingError naming the
    collection, never a hang or a bare traceback."""
    import subprocess
    import sys

    from vectune.index.edge import EdgeStore
    from vectune.index.verify import _in_child

    store = EdgeStore(Target(path=str(tmp_path / "qdrant")))
    _fill(store, "v1")
    store.close()
    runs = tmp_path / "runs.txt"
    script = tmp_path / "user_script.py"
    script.write_text(
        "from types import SimpleNamespace\n"
        "from vectune.index.edge import EdgeStore\n"
        "from vectune.index.store import Target\n"
        "from vectune.index.verify import verify_ids\n"
        f"open({str(runs)!r}, 'a').write('ran\\n')\n"
        f"store = EdgeStore(Target(path={str(tmp_path / 'qdrant')!r}))\n"
        f"corpus = SimpleNamespace(corpus=SimpleNamespace(count={len(DOCS)}, ids={set(DOCS)!r}))\n"
        "print(verify_ids(store, 'v1', corpus, apart=True)[0])\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(len(DOCS))] and runs.read_text() == "ran\n"

    # the child's own refusal comes back as it said it
    (tmp_path / "a-file").write_text("not a store")
    with pytest.raises(IndexingError, match="cannot open the embedded Qdrant at .*a-file"):
        _in_child(str(tmp_path / "a-file"), "v1", len(DOCS))
    # a child killed before it answers (here: its interpreter exits at once with status 1)
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(IndexingError, match=r"'v1': the process reading its shard died \(exit code 1"):
        _in_child(str(tmp_path / "qdrant"), "v1", len(DOCS))


def test_a_truncated_segment_file_is_refused_by_the_shard_check(tmp_path):
    """Qdrant Edge: a shard whose payload page was truncated on disk (a crash or a full disk
    mid-write) is refused by verification's shard check, with the engine's own words, and the
    check's process survives the engine's panic (it reads the shard in a child). The whole drill,
    a re-index paused before verify with the alias staying put, is
    tests/integration/test_reliability.py::test_a_truncated_segment_file_is_refused_by_verify_and_the_alias_stays."""
    import os
    from pathlib import Path

    from vectune.index.edge import EdgeStore
    from vectune.index.verify import _in_child

    root = tmp_path / "qdrant"
    store = EdgeStore(Target(path=str(root)))
    try:
        _fill(store, "docs")
        store.build_index("docs", Hnsw())  # as a re-index does before verify
    finally:
        store.close()
    assert _in_child(str(root), "docs", len(DOCS))[0] == len(DOCS)  # sound before
    pages = list(Path(root).glob("collections/docs/shard/segments/*/payload_storage/page_0.dat"))
    assert pages, sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())
    for page in pages:
        os.truncate(page, 16)  # the payloads are cut off
    with pytest.raises(IndexingError, match="Payload storage is corrupted"):
        _in_child(str(root), "docs", len(DOCS))


def test_an_index_built_with_other_hnsw_settings_than_created_keeps_the_vectors(tmp_path):
    """Qdrant Edge: a re-index resumed with the spec's HNSW settings changed since the version was
    created reloads its shard with the new settings (and the same named vectors), builds, records
    them, and serves the points it held."""
    from vectune.index.edge import EdgeStore

    store = EdgeStore(Target(path=str(tmp_path / "qdrant")))
    try:
        ids, vectors = _fill(store, "docs", sparse=True)
        built = store.build_index("docs", Hnsw(m=8, ef_construct=32, ef=16))
        assert (built["m"], built["ef_construct"], built["points"]) == (8, 32, len(DOCS))
        layout = store.layout("docs")
        assert (layout.hnsw.m, layout.hnsw.ef_construct, layout.hnsw.ef, layout.sparse) == (8, 32, 16, True)
        assert store.count("docs", has_vector=DENSE) == len(DOCS)
        assert store.search("docs", vectors[2], 1)[0].id == ids[2]
    finally:
        store.close()


def test_a_version_above_its_shard_size_is_filled_one_bounded_shard_at_a_time(tmp_path):
    """`index.shard_points`: a version holds at most that many points a shard. A fresh load fills
    one shard at a time and seals (indexes, closes) each when full, so the writing process holds
    one shard open; updates find their shard, new points go to the last; searches, counts,
    scrolls and the index build span every shard, and walking them keeps at most one open."""
    import json

    from vectune.index.edge import EdgeStore

    root = tmp_path / "qdrant"
    store = EdgeStore(Target(path=str(root)))
    vectors = _vectors(230, seed=3)
    ids = [point_id(f"d{i}") for i in range(230)]
    store.create("c", Layout(size=8, distance="cosine", shard_points=50), stamp={})
    for start in range(0, 230, 40):  # a fresh load: ids vouched new
        stop = min(start + 40, 230)
        store.upsert("c", ids[start:stop], vectors[start:stop], [{"doc_id": f"d{i}"} for i in range(start, stop)],
                     new_ids=True)
        assert list(store._shards) == [("c", store._parts("c")[-1])]  # the writer holds one shard
    parts = store._parts("c")
    assert parts == ["shard", "shard-1", "shard-2", "shard-3", "shard-4"]
    record = json.loads((root / "collections" / "c" / "version.json").read_text())
    assert record["shard_points"] == 50 and record["parts"] == parts
    assert json.loads((root / "vectune-store.json").read_text())["layout"] == 2  # an older vectune refuses it

    def per_shard():
        return [store._call("c", "count", lambda s: s.count(__import__("qdrant_edge").CountRequest(exact=True)), p)
                for p in parts]

    assert per_shard() == [50, 50, 50, 50, 30]
    assert store.count("c") == 230 and store.count("c", has_field="doc_id") == 230
    # an update stays in its shard; a new id (not vouched new) goes to the last
    store.upsert("c", [ids[3], ids[120], point_id("new")], vectors[:3],
                 [{"doc_id": "d3", "v": 2}, {"doc_id": "d120", "v": 2}, {"doc_id": "new"}])
    assert per_shard() == [50, 50, 50, 50, 31] and store.count("c") == 231
    got = {r.payload["doc_id"]: r for r in store.retrieve("c", [ids[3], ids[120], point_id("new")], ["doc_id", "v"],
                                                           vectors=True)}
    assert got["d3"].payload["v"] == 2 and got["d120"].payload["v"] == 2
    assert np.allclose(got["d120"].vector, vectors[1], atol=1e-6)
    store.delete("c", [ids[0], ids[100], point_id("new")])
    assert per_shard() == [49, 50, 49, 50, 30] and store.count("c") == 228
    pages = list(store.scroll("c", ["doc_id"], page=37))
    seen = [r.id for p in pages for r in p]
    assert len(seen) == len(set(seen)) == 228 and all(len(p) <= 37 for p in pages)
    # search spans the shards: the exact top 10 (shards this small are searched exactly)
    vectors[3], vectors[120] = vectors[0].copy(), vectors[1].copy()  # as updated above
    alive = [i for i in range(230) if i not in (0, 100)]
    for q in _vectors(5, seed=9):
        want = [ids[i] for i in sorted(alive, key=lambda i: -float(vectors[i] @ q))[:10]]
        hits = store.search("c", q, 10)
        assert [h.id for h in hits] == want and hits[0].score >= hits[-1].score
    built = store.build_index("c", Hnsw(m=16, ef_construct=100, ef=64))
    assert (built["shards"], built["points"]) == (5, 228) and built["seconds_during_load"] >= 0
    assert store._shards == {}  # built and closed, one at a time
    assert store.count("c") == 228 and store._shards == {}  # a walk closes what it opened
    sample = [ids[i] for i in (1, 60, 229)]
    assert {r.id for r in store.retrieve("c", sample, keep_open=False)} == set(sample) and store._shards == {}
    assert {r.id for r in store.retrieve("c", sample)} == set(sample) and len(store._shards) == 5  # a sync's lookups
    store.close()
    # a resumed load (another process: nothing vouched new) writes every point again: no duplicate
    again = EdgeStore(Target(path=str(root)))
    again.upsert("c", ids[:60], vectors[:60], [{"doc_id": f"d{i}"} for i in range(60)])
    assert again.count("c") == 229  # d0 was deleted: written again; the other 59 replaced where they are
    again.close()


def test_a_census_opens_each_shard_once_and_agrees_with_the_counts_and_the_ids(tmp_path, monkeypatch):
    """Verification's checks in one walk: each shard loaded once (a count and a scroll each
    loaded all of them again), one open at a time, with the counts and ids the separate calls give."""
    import qdrant_edge

    from vectune.index.points import id_checksum

    store = _small_shards(str(tmp_path / "qdrant"), 4)
    ids, _ = _fill(store, "c")
    store.build_index("c", Hnsw())
    loads = []
    real = qdrant_edge.EdgeShard.load
    monkeypatch.setattr(qdrant_edge.EdgeShard, "load", staticmethod(lambda *a, **k: loads.append(a[0]) or real(*a, **k)))
    got = store.census("c")
    assert len(loads) == 2 == len(set(loads)) and store._shards == {}
    assert got == {"points": 6, "with_vector": 6, "with_doc_id": 6, "id_checksum": id_checksum(ids)}
    assert got["points"] == store.count("c") and len(loads) == 4  # a count walks them all again
    store.close()
