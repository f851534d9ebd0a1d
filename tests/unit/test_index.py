"""Index stage pieces without Ray: ids, the client factory, stamps, alias swaps,
retention, rollback and the search model check, on a real in-memory Qdrant."""

from __future__ import annotations

import json
import pickle
import time
import uuid

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from vectune.errors import IndexingError, ModelError, SpecError
from vectune.index import collections as cols
from vectune.index.client import Secret, Target, embedded_path, open_target, target
from vectune.index.points import id_checksum, point_id
from vectune.index.live import query_model
from vectune.index.writer import fast_commits, upsert_columns
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


def test_id_checksum_is_order_free_and_catches_a_swap():
    ids = [point_id(str(i)) for i in range(50)]
    assert id_checksum(ids) == id_checksum(reversed(ids))
    assert id_checksum(ids) != id_checksum(ids[:-1] + [point_id("other")])
    assert id_checksum(ids)[0] == 50


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
        open_target(where)
    elapsed = time.perf_counter() - start
    assert "cannot reach Qdrant at http://127.0.0.1:1 after 3 attempt(s)" in str(info.value)
    assert KEY not in str(info.value)
    assert 1.4 < elapsed < 20  # backoff 0.5 + 1.0 s, then it gives up


def test_held_embedded_folder_is_a_clear_error(tmp_path):
    first = open_target(Target(path=str(tmp_path / "q")))
    try:
        with pytest.raises(IndexingError, match="open in another process"):
            # portalocker locks per open file description, so a second open in-process is refused too
            open_target(Target(path=str(tmp_path / "q")))
    finally:
        first.close()


# -- writing ----------------------------------------------------------------------------
def _make(client, name, dim=4, stamp=None):
    client.create_collection(name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                             metadata={cols.STAMP_KEY: stamp} if stamp else None)


def test_upsert_columns_overwrites_on_rerun():
    client = QdrantClient(location=":memory:")
    _make(client, "c")
    columns = {"doc_id": np.array(["a", "b", "c"]), "title": np.array(["A", "B", "C"]),
               "text": np.array(["x", "y", "z"]), "embedding": np.eye(3, 4, dtype=np.float32)}
    assert upsert_columns(client, "c", columns, batch_size=2, payload=["doc_id", "title"]) == 3
    upsert_columns(client, "c", columns, batch_size=2, payload=["doc_id", "title"])
    assert client.count("c", exact=True).count == 3
    point = client.retrieve("c", [point_id("b")], with_payload=True)[0]
    assert point.payload == {"doc_id": "b", "title": "B"}  # only the payload fields asked for


def test_embedded_store_commits_through_a_wal_and_keeps_every_point(tmp_path):
    """On disk the writer switches the collection's SQLite store to WAL + synchronous=NORMAL
    (no fsync per point); the points are all there when the folder is opened again."""
    import sqlite3

    client = QdrantClient(path=str(tmp_path / "q"))
    _make(client, "c")
    n = 300
    columns = {"doc_id": np.array([f"d{i}" for i in range(n)]),
               "embedding": np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)}
    assert upsert_columns(client, "c", columns, batch_size=64, payload=["doc_id"]) == n
    client.close()
    (store,) = (tmp_path / "q").rglob("storage.sqlite")
    with sqlite3.connect(store) as conn:  # the writer switched it; WAL is a property of the file: it persists
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again = QdrantClient(path=str(tmp_path / "q"))
    assert fast_commits(again, "c")  # an on-disk store reports it is (still) in WAL mode
    assert again.count("c", exact=True).count == n
    got = again.retrieve("c", [point_id("d7")], with_vectors=True)[0]
    want, have = columns["embedding"][7], np.asarray(got.vector)
    assert float(want @ have / np.linalg.norm(want) / np.linalg.norm(have)) > 0.99999  # the same direction
    again.close()


def test_fast_commits_leaves_memory_and_unknown_collections_alone():
    client = QdrantClient(location=":memory:")
    _make(client, "c")
    assert fast_commits(client, "c") is False  # no SQLite store in memory
    assert fast_commits(client, "nope") is False


def test_upsert_fault_point_fires_after_n_batches(monkeypatch):
    from vectune import _faults

    client = QdrantClient(location=":memory:")
    _make(client, "c")
    columns = {"doc_id": np.array([str(i) for i in range(10)]), "embedding": np.ones((10, 4), dtype=np.float32)}
    _faults.switch(**{"index.upsert": {"after": 3}})
    try:
        with pytest.raises(RuntimeError, match="injected failure after 3"):
            upsert_columns(client, "c", columns, batch_size=2, payload=["doc_id"])
    finally:
        _faults.clear()
    assert client.count("c", exact=True).count == 6  # three batches landed before it


# -- versions, alias, retention, rollback ----------------------------------------------
def _versions(client, spec, n):
    names = []
    for i in range(n):
        name = cols.collection_name(spec, f"r{i}")
        # a hub model (no folder to check) and 4-d cosine vectors, as the collections hold
        _make(client, name, stamp={"base": "docs", "run_id": f"r{i}", "state": "ready", "created": f"2026-01-0{i + 1}",
                                    "model_fingerprint": f"hub:model-{i}", "dimension": 4, "distance": "cosine"})
        names.append(name)
    return names


def test_swap_is_one_atomic_call_and_keeps_previous(tmp_path):
    spec = _spec(tmp_path, keep=1)
    client = QdrantClient(location=":memory:")
    a, b = _versions(client, spec, 2)
    assert cols.swap_alias(client, "docs", a) is None
    assert cols.swap_alias(client, "docs", b) == a
    assert cols.live_collection(client, "docs") == b
    assert [x.alias_name for x in client.get_aliases().aliases] == ["docs"]  # delete + create, one alias


def test_alias_cannot_shadow_a_collection(tmp_path):
    client = QdrantClient(location=":memory:")
    _make(client, "docs")
    with pytest.raises(IndexingError, match="cannot be an alias"):
        cols.swap_alias(client, "docs", "docs")


def test_versions_ignore_collections_vectune_did_not_make(tmp_path):
    spec = _spec(tmp_path)
    client = QdrantClient(location=":memory:")
    _versions(client, spec, 2)
    _make(client, "docs__handmade")  # no stamp
    _make(client, "other__r0", stamp={"base": "other", "state": "ready"})
    assert [v.name for v in cols.versions(client, spec)] == ["docs__r1", "docs__r0"]


def test_retention_keeps_n_previous_and_never_the_live_one(tmp_path):
    spec = _spec(tmp_path, keep=1)
    client = QdrantClient(location=":memory:")
    names = _versions(client, spec, 4)
    cols.update_stamp(client, names[1], state="building")  # a crashed run: never kept
    for name in (names[0], names[2], names[3]):
        cols.promote(client, spec, name)
    deleted = cols.retain(client, spec, names[3])
    assert sorted(deleted) == [names[0], names[1]]
    assert {c.name for c in client.get_collections().collections} == {names[2], names[3]}
    assert cols.live_collection(client, "docs") == names[3]


def test_rollback_goes_back_one_version_at_a_time(tmp_path):
    spec = _spec(tmp_path, keep=3)
    client = QdrantClient(location=":memory:")
    names = _versions(client, spec, 3)
    for name in names:
        cols.promote(client, spec, name)
    first = cols.rollback(client, spec)
    assert (first["previous"], first["live"]) == (names[2], names[1])
    assert cols.read_stamp(client, names[2])["state"] == "rolled_back"
    second = cols.rollback(client, spec)
    assert second["live"] == names[0]  # further back, not toggling to names[2]
    with pytest.raises(IndexingError, match="no previous verified collection"):
        cols.rollback(client, spec)
    assert cols.rollback(client, spec, to="r2")["live"] == names[2]


def test_rollback_refuses_an_unverified_collection(tmp_path):
    spec = _spec(tmp_path)
    client = QdrantClient(location=":memory:")
    names = _versions(client, spec, 2)
    cols.promote(client, spec, names[0])
    cols.update_stamp(client, names[1], state="failed")
    with pytest.raises(IndexingError, match="not a verified collection"):
        cols.rollback(client, spec, to=names[1])
    with pytest.raises(IndexingError, match="no previous verified"):
        cols.rollback(client, spec)


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
