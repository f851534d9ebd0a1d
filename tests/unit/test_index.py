"""Index stage pieces without Ray: ids, the store factory, the embedded engine's folder (Qdrant
Edge: shard folders, version records, the alias record), stamps, alias swaps, retention, rollback
and the search model check. Versions and rollback run on both engines; a server is stood in for
by qdrant-client's local mode (`testdata.server_stand_in`: no Qdrant server exists here)."""

from __future__ import annotations

import json
import os
import pickle
import random
import time
import uuid

import numpy as np
import pytest
from testdata import server_stand_in

from vectune.errors import IndexingError, ModelError, SpecError
from vectune.index import collections as cols
from vectune.index.edge import DiskFull, EdgeStore, OldStoreError
from vectune.index.live import query_model
from vectune.index.points import id_checksum, point_id
from vectune.index.server import ServerStore
from vectune.index.store import Hnsw, Layout, Secret, Target, embedded_path, target
from vectune.index.engines import open_store
from vectune.index.writer import upsert_columns
from vectune.spec import Spec

KEY = "sk-vectune-unit-3b9f1e77"


def _spec(tmp_path, **index) -> Spec:
    spec = Spec.model_validate({"version": 1, "name": "docs", "data": {"corpus": {"path": "c.jsonl"}},
                                "runtime": {"runs": str(tmp_path / "runs")}, "index": index})
    return spec


# -- ids ------------------------------------------------------------------------------
def test_point_ids_are_stable_uuid5_and_distinct():
    assert point_id("4983") == point_id("4983")
    assert uuid.UUID(point_id("4983")).version == 5
    assert len({point_id(str(i)) for i in range(1000)}) == 1000


def test_point_ids_are_exactly_uuid5_so_collections_built_before_keep_their_ids():
    from vectune.index.points import POINT_NAMESPACE

    for doc_id in ["4983", "", "a" * 1000, "ünïcødé", "id with spaces", "12/34?x=1", "\x00\x1f"]:
        assert point_id(doc_id) == str(uuid.uuid5(POINT_NAMESPACE, doc_id))
    from vectune.index.points import doc_keys

    assert doc_keys(["x", "4983"]).tolist() == [uuid.uuid5(POINT_NAMESPACE, d).int >> 64 for d in ("x", "4983")]
    assert id_checksum([point_id("a"), point_id("b")])[1] == (
        uuid.UUID(point_id("a")).int + uuid.UUID(point_id("b")).int) % (1 << 128)


def test_id_checksum_is_order_free_and_catches_a_swap():
    ids = [point_id(str(i)) for i in range(50)]
    assert id_checksum(ids) == id_checksum(reversed(ids))
    assert id_checksum(ids) != id_checksum(ids[:-1] + [point_id("other")])
    assert id_checksum(ids)[0] == 50


def test_key_checksums_are_the_id_checksum_and_add_and_subtract_as_sets():
    """The sync sums its corpus's ids from 16-byte keys (vectorised) and the scan's less the gone
    ones: both must be exactly `id_checksum`, carries and wrap-around at 2**128 included."""
    from vectune.index.points import checksum_plus, id_keys, key_checksum, point_ids_and_keys

    docs = [f"doc-{i}" for i in range(3_000)]
    ids, keys = point_ids_and_keys(docs)
    assert ids == [point_id(d) for d in docs] and list(id_keys(ids)) == list(keys)
    assert key_checksum(keys) == id_checksum(ids) and key_checksum(keys[:0]) == (0, 0) == id_checksum([])
    top = ["ffffffff-ffff-5fff-bfff-ffffffffffff"] * 3  # sums past 2**128 wrap the same way
    assert key_checksum(id_keys(top)) == id_checksum(top)
    whole, part = id_checksum(ids), id_checksum(ids[:1_000])
    assert checksum_plus(whole, part, -1) == id_checksum(ids[1_000:])
    assert checksum_plus(part, id_checksum(ids[1_000:])) == whole


# -- client factory ---------------------------------------------------------------------
def test_embedded_engine_is_the_default_under_the_runs_folder(tmp_path):
    spec = _spec(tmp_path)
    assert embedded_path(spec) == str(tmp_path / "runs" / "qdrant")
    assert target(spec).embedded


def test_api_key_comes_from_the_named_variable_and_never_prints(tmp_path, monkeypatch):
    monkeypatch.setenv("VECTUNE_UNIT_KEY", KEY)
    where = target(_spec(tmp_path, qdrant={"url": "http://127.0.0.1:1", "api_key_env": "VECTUNE_UNIT_KEY"}))
    assert where.api_key.reveal() == KEY
    for text in (repr(where), str(where.api_key), where.describe(), repr(pickle.loads(pickle.dumps(where)))):
        assert KEY not in text
    assert pickle.loads(pickle.dumps(where)).api_key.reveal() == KEY  # workers can still use it


def test_missing_key_variable_is_a_spec_error(tmp_path, monkeypatch):
    monkeypatch.delenv("VECTUNE_UNIT_KEY", raising=False)
    with pytest.raises(SpecError, match="VECTUNE_UNIT_KEY is not set"):
        target(_spec(tmp_path, qdrant={"url": "http://127.0.0.1:1", "api_key_env": "VECTUNE_UNIT_KEY"}))


@pytest.mark.parametrize("grpc", [False, True])
def test_refused_server_gets_bounded_retries_then_a_clear_error(grpc):
    where = Target(url="http://127.0.0.1:1", prefer_grpc=grpc, timeout=2, retries=2, api_key_env="K",
                   api_key=Secret(KEY))
    start = time.perf_counter()
    with pytest.raises(IndexingError) as info:
        open_store(where)
    elapsed = time.perf_counter() - start
    assert "cannot reach Qdrant at http://127.0.0.1:1 after 3 attempt(s)" in str(info.value)
    assert KEY not in str(info.value)
    assert 1.4 < elapsed < 20  # backoff 0.5 + 1.0 s, then it gives up


# -- the embedded engine's folder ---------------------------------------------------------
def test_embedded_store_lays_out_one_shard_and_one_record_per_version(tmp_path):
    store = open_store(Target(path=str(tmp_path / "q")))
    assert isinstance(store, EdgeStore)
    store.create("docs__r1", Layout(size=4, distance="cosine", hnsw=Hnsw(m=24, ef_construct=150, ef=96)),
                 stamp={"base": "docs", "state": "building"})
    store.upsert("docs__r1", [point_id("a")], np.ones((1, 4), dtype=np.float32), [{"doc_id": "a"}])
    built = store.build_index("docs__r1", Hnsw(m=24, ef_construct=150, ef=96))
    store.swap_alias("docs", "docs__r1")
    store.close()
    root = tmp_path / "q"
    assert json.loads((root / "vectune-store.json").read_text())["engine"] == "qdrant-edge-py"
    version = json.loads((root / "collections" / "docs__r1" / "version.json").read_text())
    assert (root / "collections" / "docs__r1" / "shard" / "edge_config.json").is_file()  # an Edge shard
    assert version["vectune"] == {"base": "docs", "state": "building"}  # the stamp, beside the shard
    assert version["vectors"] == {"dense": {"size": 4, "distance": "cosine", "on_disk": False}}
    assert version["hnsw"] == {"m": 24, "ef_construct": 150, "ef": 96, "on_disk": False}
    assert version["index"]["points"] == 1 and version["index"]["seconds"] == built["seconds"]
    assert json.loads((root / "aliases" / "docs.json").read_text())["collection"] == "docs__r1"
    again = open_store(Target(path=str(root)))  # readers resolve the alias on every open
    try:
        assert again.alias("docs") == "docs__r1" and again.count("docs__r1") == 1
        assert again.layout("docs__r1").hnsw.ef == 96
    finally:
        again.close()


def test_auto_ef_holds_the_measured_sizes_and_grows_with_the_square_root_beyond():
    from vectune.index.store import auto_ef

    # 256 held recall@10 >= 0.968 up to 200,000 points; at 1,000,000 it fell to 0.929 and 512 gave 0.965
    assert auto_ef(0) == auto_ef(5_183) == auto_ef(250_000) == 256
    assert auto_ef(1_000_000) == 512 and auto_ef(500_000) == 384
    sizes = [250_001, 400_000, 2_000_000, 10_000_000, 10**9]
    efs = [auto_ef(n) for n in sizes]
    assert efs == sorted(efs) and all(e % 64 == 0 for e in efs) and efs[-1] == 4096


def test_spec_ef_is_auto_a_bounded_number_or_the_engines_default(tmp_path):
    from vectune.index.store import hnsw

    assert _spec(tmp_path).index.hnsw.ef == "auto"
    # the embedded engine searches each shard (`shard_points`, 100,000 by default) by itself
    assert hnsw(_spec(tmp_path), 1_000_000).ef == 256 and hnsw(_spec(tmp_path), 300).ef == 256
    assert hnsw(_spec(tmp_path, shard_points=None), 1_000_000).ef == 512
    assert hnsw(_spec(tmp_path, shard_points=500_000), 1_000_000).ef == 384
    assert hnsw(_spec(tmp_path, qdrant={"url": "http://q:6333"}), 1_000_000).ef == 512  # a server: one collection
    assert hnsw(_spec(tmp_path, hnsw={"ef": 96}), 1_000_000).ef == 96
    assert hnsw(_spec(tmp_path, hnsw={"ef": None}), 1_000_000).ef is None
    for bad in (0, 100_001, "fast", True, 1.5):
        with pytest.raises(Exception) as info:
            _spec(tmp_path, hnsw={"ef": bad})
        assert "ef" in str(info.value)


def test_a_sync_keeps_the_built_graph_and_moves_the_search_ef_with_the_size(tmp_path):
    """m and ef_construct are the graph's (changing them needs a rebuild), but `ef` is read at
    search time: `auto` follows the collection's point count through syncs."""
    from vectune.index.sync import _built_with

    store = open_store(Target(path=str(tmp_path / "q")))
    try:
        _make(store, "docs__r1", stamp={"hnsw": {"m": 24, "ef_construct": 150, "ef": 256}})
        grown = _built_with(store, "docs__r1", _spec(tmp_path), 1_000_000)
        assert (grown.m, grown.ef_construct, grown.ef) == (24, 150, 512)
        assert _built_with(store, "docs__r1", _spec(tmp_path, hnsw={"ef": 64, "m": 8}), 10).ef == 64
        assert _built_with(store, "docs__r1", _spec(tmp_path, hnsw={"m": 8}), 10).m == 24
    finally:
        store.close()


def test_a_shard_is_opened_by_one_store_at_a_time(tmp_path):
    first = open_store(Target(path=str(tmp_path / "q")))
    first.create("c", Layout(size=4, distance="cosine"), stamp={})
    second = open_store(Target(path=str(tmp_path / "q")))
    try:
        with pytest.raises(IndexingError, match="is open in another process"):
            second.count("c")  # Edge locks a shard's WAL per open; a second open waits for the first to close
        assert second.collections() == ["c"] and second.read_stamp("c") == {}  # records need no shard
        first.close()
        assert second.count("c") == 0
    finally:
        first.close()
        second.close()


def test_an_alias_swap_killed_before_its_rename_leaves_the_old_record(tmp_path):
    """The new record is written to a temp file and fsynced, then renamed over the old one: a
    writer that dies in between leaves the old alias in place (the drill with a real SIGKILL is
    in tests/integration/test_reliability.py), and the next swap clears its temp file."""
    from vectune import _faults

    store = open_store(Target(path=str(tmp_path / "q")))
    try:
        for name in ("docs__a", "docs__b"):
            store.create(name, Layout(size=4, distance="cosine"), stamp={})
        store.swap_alias("docs", "docs__a")
        _faults.switch(**{"index.alias": {"mode": "raise"}})
        try:
            with pytest.raises(RuntimeError, match="injected failure at index.alias"):
                store.swap_alias("docs", "docs__b")
        finally:
            _faults.clear()
        assert store.alias("docs") == "docs__a"
        stale = tmp_path / "q" / "aliases" / ".docs.json.999.deadbeef.tmp"  # as a SIGKILLed writer leaves it
        stale.write_text("{")
        assert store.alias("docs") == "docs__a"  # readers never look at temp files
        assert store.swap_alias("docs", "docs__b") == "docs__a"
        assert not stale.exists() and store.alias("docs") == "docs__b"
        with pytest.raises(IndexingError, match="no collection 'docs__c'"):
            store.swap_alias("docs", "docs__c")
    finally:
        store.close()


def test_an_older_vectunes_store_is_recognised_and_left_alone(tmp_path):
    """A folder qdrant-client's local mode wrote (vectune before Qdrant Edge): a clear error with
    the command that rebuilds the index, exit code 2, every file left as it was."""
    from qdrant_client import QdrantClient, models

    old = tmp_path / "qdrant"
    client = QdrantClient(path=str(old))  # how an older vectune kept its embedded store
    client.create_collection("docs__r1", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    client.close()
    before = {p: p.stat().st_mtime_ns for p in old.rglob("*")}
    assert (old / "meta.json").is_file() and list(old.glob("collection/*/storage.sqlite"))
    with pytest.raises(OldStoreError) as info:
        open_store(Target(path=str(old)), spec_source="specs/docs.yaml")
    message = str(info.value)
    assert info.value.exit_code == 2 and isinstance(info.value, IndexingError)
    assert str(old) in message and "older vectune" in message and "Nothing was changed or deleted" in message
    assert f"vectune reindex specs/docs.yaml --full --set index.qdrant.path={old}-edge" in message
    assert {p: p.stat().st_mtime_ns for p in old.rglob("*")} == before
    assert pickle.loads(pickle.dumps(info.value)).args == info.value.args  # survives a Ray actor


def test_writes_refuse_a_nearly_full_disk_instead_of_dying(tmp_path, monkeypatch):
    """Edge writes through memory-mapped files: on a full disk the process dies of SIGBUS. Every
    write checks the free space first (the real full disk is drilled in test_reliability.py)."""
    from vectune.index import edge

    store = open_store(Target(path=str(tmp_path / "q")))
    try:
        store.create("c", Layout(size=4, distance="cosine"), stamp={})
        store.upsert("c", [point_id("a")], np.ones((1, 4), dtype=np.float32), [{"doc_id": "a"}])
        monkeypatch.setattr(edge, "free_bytes", lambda folder: 10 << 20)
        with pytest.raises(DiskFull, match="not enough free space .* 10 MiB free"):
            store.upsert("c", [point_id("b")], np.ones((1, 4), dtype=np.float32), [{"doc_id": "b"}])
        with pytest.raises(DiskFull, match="build the index of c"):
            store.build_index("c", Hnsw())
        monkeypatch.undo()
        assert store.count("c") == 1
    finally:
        store.close()


def test_memory_is_a_temporary_folder_gone_on_close():
    store = open_store(Target(path=":memory:"))
    root = store.root
    store.create("c", Layout(size=4, distance="cosine"), stamp={})
    assert root.is_dir()
    store.close()
    assert not root.exists()


# -- writing ----------------------------------------------------------------------------
@pytest.fixture(params=["edge", "server"])
def store(request, tmp_path):
    s = open_store(Target(path=str(tmp_path / "q"))) if request.param == "edge" else server_stand_in()
    yield s
    s.close()


def _make(store, name, dim=4, stamp=None):
    store.create(name, Layout(size=dim, distance="cosine"), stamp=stamp or {})


def test_upsert_columns_overwrites_on_rerun(store):
    _make(store, "c")
    columns = {"doc_id": np.array(["a", "b", "c"]), "title": np.array(["A", "B", "C"]),
               "text": np.array(["x", "y", "z"]), "embedding": np.eye(3, 4, dtype=np.float32)}
    assert upsert_columns(store, "c", columns, batch_size=2, payload=["doc_id", "title"]) == 3
    upsert_columns(store, "c", columns, batch_size=2, payload=["doc_id", "title"])
    assert store.count("c") == 3
    point = store.retrieve("c", [point_id("b")], ["doc_id", "title", "text"])[0]
    assert point.payload == {"doc_id": "b", "title": "B"}  # only the payload fields asked for


def test_embedded_store_keeps_every_point_across_a_reopen(tmp_path):
    store = open_store(Target(path=str(tmp_path / "q")))
    _make(store, "c")
    n = 300
    columns = {"doc_id": np.array([f"d{i}" for i in range(n)]),
               "embedding": np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)}
    assert upsert_columns(store, "c", columns, batch_size=64, payload=["doc_id"]) == n
    store.close()
    again = open_store(Target(path=str(tmp_path / "q")))
    try:
        assert again.count("c") == n
        got = again.retrieve("c", [point_id("d7")], vectors=True)[0]
        want, have = columns["embedding"][7], np.asarray(got.vector)
        assert float(want @ have / np.linalg.norm(want) / np.linalg.norm(have)) > 0.99999  # the same direction
    finally:
        again.close()


def test_upsert_fault_point_fires_after_n_batches(store):
    from vectune import _faults

    _make(store, "c")
    columns = {"doc_id": np.array([str(i) for i in range(10)]), "embedding": np.ones((10, 4), dtype=np.float32)}
    _faults.switch(**{"index.upsert": {"after": 3}})
    try:
        with pytest.raises(RuntimeError, match="injected failure after 3"):
            upsert_columns(store, "c", columns, batch_size=2, payload=["doc_id"])
    finally:
        _faults.clear()
    assert store.count("c") == 6  # three batches landed before it


# -- versions, alias, retention, rollback (both engines) ------------------------------
def _versions(store, spec, n):
    names = []
    for i in range(n):
        name = cols.collection_name(spec, f"r{i}")
        # a hub model (no folder to check) and 4-d cosine vectors, as the collections hold
        _make(store, name, stamp={"base": "docs", "run_id": f"r{i}", "state": "ready", "created": f"2026-01-0{i + 1}",
                                  "model_fingerprint": f"hub:model-{i}", "dimension": 4, "distance": "cosine"})
        names.append(name)
    return names


def test_swap_is_one_atomic_step_and_keeps_previous(store, tmp_path):
    spec = _spec(tmp_path, keep=1)
    a, b = _versions(store, spec, 2)
    assert cols.swap_alias(store, "docs", a) is None
    assert cols.swap_alias(store, "docs", b) == a
    assert cols.live_collection(store, "docs") == b
    if isinstance(store, ServerStore):  # delete + create in one call: one alias
        assert [x.alias_name for x in store.client.get_aliases().aliases] == ["docs"]


def test_alias_cannot_shadow_a_collection(store):
    _make(store, "docs")
    with pytest.raises(IndexingError, match="cannot be an alias"):
        cols.swap_alias(store, "docs", "docs")


def test_versions_ignore_collections_vectune_did_not_make(store, tmp_path):
    spec = _spec(tmp_path)
    _versions(store, spec, 2)
    _make(store, "docs__handmade")  # no stamp
    _make(store, "other__r0", stamp={"base": "other", "state": "ready"})
    assert [v.name for v in cols.versions(store, spec)] == ["docs__r1", "docs__r0"]


def test_retention_keeps_n_previous_and_never_the_live_one(store, tmp_path):
    spec = _spec(tmp_path, keep=1)
    names = _versions(store, spec, 4)
    cols.update_stamp(store, names[1], state="building")  # a crashed run: never kept
    for name in (names[0], names[2], names[3]):
        cols.promote(store, spec, name)
    deleted = cols.retain(store, spec, names[3])
    assert sorted(deleted) == [names[0], names[1]]
    assert set(store.collections()) == {names[2], names[3]}
    assert cols.live_collection(store, "docs") == names[3]


def test_rollback_goes_back_one_version_at_a_time(store, tmp_path):
    spec = _spec(tmp_path, keep=3)
    names = _versions(store, spec, 3)
    for name in names:
        cols.promote(store, spec, name)
    first = cols.rollback(store, spec)
    assert (first["previous"], first["live"]) == (names[2], names[1])
    assert cols.read_stamp(store, names[2])["state"] == "rolled_back"
    second = cols.rollback(store, spec)
    assert second["live"] == names[0]  # further back, not toggling to names[2]
    with pytest.raises(IndexingError, match="no previous verified collection"):
        cols.rollback(store, spec)
    assert cols.rollback(store, spec, to="r2")["live"] == names[2]


def test_rollback_refuses_an_unverified_collection(store, tmp_path):
    spec = _spec(tmp_path)
    names = _versions(store, spec, 2)
    cols.promote(store, spec, names[0])
    cols.update_stamp(store, names[1], state="failed")
    with pytest.raises(IndexingError, match="not a verified collection"):
        cols.rollback(store, spec, to=names[1])
    with pytest.raises(IndexingError, match="no previous verified"):
        cols.rollback(store, spec)


def test_rollback_refuses_a_damaged_version(store, tmp_path):
    """A version whose points lost their vectors (a truncated segment file on Edge) is never served."""
    spec = _spec(tmp_path)
    names = _versions(store, spec, 2)
    for name in names:
        store.upsert(name, [point_id("a")], np.ones((1, 4), dtype=np.float32), [{"doc_id": "a"}])
    cols.promote(store, spec, names[0])
    cols.promote(store, spec, names[1])
    store.upsert(names[0], [point_id("b")], np.ones((1, 4), dtype=np.float32), [{}])  # a point without doc_id
    with pytest.raises(IndexingError, match="damaged: 1 of its 2 points have no doc_id"):
        cols.rollback(store, spec)
    assert cols.live_collection(store, "docs") == names[1]


# -- the search model check -------------------------------------------------------------
def _model_dir(path, marker):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"marker": marker}))
    return str(path)


def test_search_refuses_a_model_other_than_the_stamped_one(tmp_path):
    from vectune.embed import model_fingerprint

    stamped = _model_dir(tmp_path / "tuned", 1)
    other = _model_dir(tmp_path / "other", 2)
    stamp = {"model_path": stamped, "model_fingerprint": model_fingerprint(stamped)}
    assert query_model(stamp, None) == (stamped, stamp["model_fingerprint"])
    with pytest.raises(ModelError, match="is not the model that built the live collection") as info:
        query_model(stamp, other)
    assert info.value.exit_code == 2
    assert query_model(stamp, other, force=True)[0] == other
    copy = _model_dir(tmp_path / "copy", 1)  # the same model elsewhere: same fingerprint, accepted
    assert query_model(stamp, copy)[0] == copy


def test_search_explains_a_missing_stamped_model(tmp_path):
    stamp = {"model_path": str(tmp_path / "gone"), "model_fingerprint": "abc"}
    with pytest.raises(ModelError, match="not on this machine"):
        query_model(stamp, None)


# -- which model `vectune reindex` promotes ---------------------------------------------
def test_reindex_promotes_the_newest_model_that_passed_the_gate(tmp_path):
    from vectune.embed import resolve_model
    from vectune.index import promoted_model
    from vectune.runs import Run

    spec = _spec(tmp_path)
    assert promoted_model(spec)[0] == resolve_model("all-MiniLM-L6-v2")  # no run yet: the base model

    def run(run_id, passed, model):
        r = Run.create(spec, run_id)
        r.manifest["models"]["tuned"] = {"path": str(model), "fingerprint": "x"}
        r.record("gate", {"passed": passed})

    good = tmp_path / "good"
    good.mkdir()
    run("20260101-000000-aaaa", True, good)
    run("20260102-000000-bbbb", False, tmp_path / "failed")  # newer, but the gate said no
    run("20260103-000000-cccc", True, tmp_path / "deleted")  # newest passed, but its folder is gone
    path, source = promoted_model(spec)
    assert path == str(good) and "20260101-000000-aaaa" in source


def test_write_tasks_draw_the_verification_sample_the_corpus_would_give():
    """Each write task keeps the k smallest sample keys of its rows under `sample_bar`; merged on
    completion they are exactly `verify.sample_ids` over the whole corpus (so a full build's
    verification needs no second pass over the corpus for the sampled texts), and what all the
    tasks send back is a bounded number of rows, not tasks x k: texts and vectors in the driver
    that would grow with the corpus. The vectors come along for the rows the encoder computed."""
    from types import SimpleNamespace

    from vectune.embed.encoder import FRESH
    from vectune.index.verify import sample_ids
    from vectune.index.writer import StoreDatasink, _draw, sample_bar

    k, n = 8, 20_000
    docs = [(f"d{i}", f"text {i}") for i in range(n)]
    vectors = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)

    def run(tasks: int, rows_said: int) -> tuple[StoreDatasink, int]:
        returns, sent = [], 0
        per = n // tasks
        for t in range(tasks):
            drawn: list = []
            for start in range(t * per, (t + 1) * per, 100):  # blocks
                block = range(start, start + 100)
                columns = {"doc_id": [docs[i][0] for i in block], "text": [docs[i][1] for i in block],
                           "embedding": vectors[start:start + 100], FRESH: np.array([i % 3 != 0 for i in block])}
                drawn = _draw(drawn, columns, k, "run-1", rows_said)
            returns.append({"written": per, "sample": drawn})
            sent += len(drawn)
        sink = StoreDatasink("c", handle=None, batch_size=8, payload=["doc_id"], sample=(k, "run-1", rows_said))
        sink.on_write_complete(SimpleNamespace(write_returns=returns))
        return sink, sent

    sink, sent = run(tasks=100, rows_said=n)
    assert sink.written == n
    assert list(sink.sample) == sample_ids([d for d, _ in docs], k, "run-1")
    assert all(sink.sample[d] == f"text {d[1:]}" for d in sink.sample)
    # the candidates sent back: about 4k + 32 in all, where each task's own k would be 800
    assert sent <= 2 * (4 * k + 32) < 100 * k
    # the vectors of the sampled rows the encoder computed (not those from the cache)
    fresh = {d for d in sink.sample if int(d[1:]) % 3 != 0}
    assert set(sink.fresh) == fresh and fresh
    assert all(np.array_equal(sink.fresh[d], vectors[int(d[1:])]) for d in fresh)

    # a small corpus keeps every row as a candidate; a bar set for far more rows than came (a
    # wrong count) leaves too few: then no sample, and the verification draws its own
    assert sample_bar(k, 4 * k + 32) is None and sample_bar(k, n) is not None
    short, _ = run(tasks=10, rows_said=1000 * n)
    assert short.written == n and getattr(short, "sample", None) is None


def test_points_outside_the_corpus_are_found_exactly_by_their_ids():
    """The sync's gone points: point ids looked up among the corpus's sorted 16-byte keys.
    Exact for every id, those whose bytes end in zeros included (numpy's `S16` pads with them),
    and in any order, with an empty corpus or an empty page."""
    from vectune.index.points import point_keys, points_outside

    docs = [f"d{i}" for i in range(5_000)]
    keys = point_keys(docs)
    assert len(keys) == len(docs) and list(keys) == sorted(keys)
    gone = [point_id(f"gone{i}") for i in range(50)]
    page = [point_id(d) for d in docs[::7]] + gone
    random.Random(0).shuffle(page)
    assert sorted(points_outside(keys, page)) == sorted(gone)
    assert points_outside(keys, []) == [] and points_outside(point_keys([]), gone[:2]) == gone[:2]
    # ids whose last bytes are zeros: stored padded, still told apart from their neighbours
    zeros = np.array([b"\x01" * 14 + b"\x00\x00", b"\x01" * 15 + b"\x00", b"\x01" * 16], dtype="S16")
    as_ids = ["-".join([h[:8], h[8:12], h[12:16], h[16:20], h[20:]]) for h in (bytes(z).ljust(16, b"\x00").hex()
                                                                               for z in zeros)]
    assert points_outside(np.sort(zeros[:1]), as_ids) == as_ids[1:]
    assert points_outside(np.sort(zeros[1:]), as_ids) == as_ids[:1]
