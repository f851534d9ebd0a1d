"""Incremental sync pieces without Ray: when a live collection may be synced in place, the
content hashes points carry, and the stored side of the diff, on both engines (Qdrant Edge, and
qdrant-client's local mode standing in for a server: `testdata.server_stand_in`)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from testdata import server_stand_in

from vectune.index import collections as cols
from vectune.index.points import (add_content_hash, content_hashes, doc_keys, hash_hex, id_checksum, payload_fields,
                                  point_id, point_ids_and_keys, point_keys)
from vectune.index.stage import vector_settings
from vectune.index.store import Layout, Target
from vectune.index.engines import open_store
from vectune.index.sync import StoredHashes, delete_points, scan_ids, stored_hashes, unchanged_since_stamp
from vectune.index.writer import upsert_columns
from vectune.spec import Spec


def _spec(tmp_path, model=None, **index) -> Spec:
    return Spec.model_validate({"version": 1, "name": "docs", "data": {"corpus": {"path": "c.jsonl"}},
                                "runtime": {"runs": str(tmp_path / "runs")}, "model": model or {}, "index": index})


def _stamp(spec, fingerprint="fp1", **changes) -> dict:
    return {**vector_settings(spec, fingerprint), "dimension": 384, "state": "ready", **changes}


# -- when a sync is allowed -------------------------------------------------------------
def test_a_matching_stamp_allows_a_sync(tmp_path):
    spec = _spec(tmp_path)
    assert cols.full_build_reason(_stamp(spec), vector_settings(spec, "fp1"), size=384, distance="Cosine") is None


def test_an_int8_recipe_change_forces_a_full_build(tmp_path, monkeypatch):
    from vectune.embed import int8

    spec = _spec(tmp_path, {"precision": "int8"})
    live = _stamp(spec)
    assert live["int8_recipe"] == int8.tag() and _stamp(_spec(tmp_path))["int8_recipe"] is None
    monkeypatch.setattr(int8, "tag", lambda: "r9-another")  # any change of recipe, calibration or library
    assert cols.full_build_reason(live, vector_settings(spec, "fp1")) == \
        f"int8_recipe changed: live {live['int8_recipe']!r}, now 'r9-another'"


@pytest.mark.parametrize("now, expected", [
    ({"fingerprint": "fp2"}, "model changed: live 'fp1', now 'fp2'"),
    ({"model": {"precision": "bf16"}}, "precision changed: live 'fp32', now 'bf16'"),
    ({"model": {"document_prefix": "passage: "}}, "document_prefix changed: live '', now 'passage: '"),
    ({"model": {"max_seq_length": 128}}, "max_seq_length changed: live None, now 128"),
    ({"model": {"normalize": False}}, "normalize changed: live True, now False"),
    ({"index": {"distance": "dot"}}, "distance changed: live 'cosine', now 'dot'"),
    ({"index": {"payload": ["doc_id"]}}, "payload changed: live ['doc_id', 'text', 'text_hash', 'title'], "
                                         "now ['doc_id', 'text_hash']"),
])
def test_any_vector_or_payload_setting_that_changed_forces_a_full_build(tmp_path, now, expected):
    live = _stamp(_spec(tmp_path))
    spec = _spec(tmp_path, now.get("model"), **now.get("index", {}))
    assert cols.full_build_reason(live, vector_settings(spec, now.get("fingerprint", "fp1"))) == expected


def test_old_unverified_or_tampered_collections_are_rebuilt(tmp_path):
    spec = _spec(tmp_path)
    wanted = vector_settings(spec, "fp1")
    assert "no collection is live" in cols.full_build_reason(None, wanted)
    assert "stamp format 1: its points carry no text hashes" in cols.full_build_reason(_stamp(spec, format=1), wanted)
    assert "stamp format 2: its vector is unnamed" in cols.full_build_reason(_stamp(spec, format=2), wanted)
    assert "'failed', not a verified one" in cols.full_build_reason(_stamp(spec, state="failed"), wanted)
    assert cols.full_build_reason(_stamp(spec), wanted, size=768) == (
        "vector size: the live collection holds 768-d vectors, its stamp says 384")
    assert "uses Dot, its stamp says cosine" in cols.full_build_reason(_stamp(spec), wanted, size=384, distance="Dot")


def test_only_a_finished_sync_of_the_same_file_skips_the_diff():
    assert unchanged_since_stamp({"corpus_sha256": "abc"}, "abc")
    assert unchanged_since_stamp({"corpus_sha256": "abc", "sync": {"state": "done"}}, "abc")
    assert not unchanged_since_stamp({"corpus_sha256": "abd"}, "abc")
    # killed mid-way, then the corpus went back to the file last synced: the collection may hold a mix
    assert not unchanged_since_stamp({"corpus_sha256": "abc", "sync": {"state": "running"}}, "abc")


# -- what points carry -----------------------------------------------------------------
def test_content_hash_sees_title_and_text_apart():
    a, b, c = content_hashes(["Aspirin", "Aspirin heart", "Aspirin"], ["heart risk", "risk", "heart risk"])
    assert a == c and a != b  # words moved from text to title: another payload, another hash
    assert [len(h) for h in hash_hex(np.array([a, 0], dtype=np.uint64))] == [16, 16]
    batch = add_content_hash({"title": np.array(["t"]), "text": np.array(["x"])})
    assert batch["text_hash"][0] == hash_hex(content_hashes(["t"], ["x"]))[0]


def test_document_keys_are_the_point_ids_high_half():
    ids = ["4983", "d1", "ü-7"]
    assert doc_keys(ids).tolist() == [uuid.UUID(point_id(d)).int >> 64 for d in ids]
    assert len(set(doc_keys(ids))) == 3


def test_payload_always_carries_doc_id_and_text_hash(tmp_path):
    assert payload_fields(_spec(tmp_path, payload=["title"])) == ["doc_id", "text_hash", "title"]


# -- the stored side of the diff ---------------------------------------------------------
@pytest.fixture(params=["edge", "server"])
def store(request, tmp_path):
    s = open_store(Target(path=str(tmp_path / "q"))) if request.param == "edge" else server_stand_in()
    yield s
    s.close()


def _store(store, docs: dict[str, str | None]) -> None:
    store.create("c", Layout(size=2, distance="cosine"), stamp={})
    ids = list(docs)
    columns = {"doc_id": np.array(ids), "embedding": np.ones((len(ids), 2), dtype=np.float32),
               "text_hash": np.array([h or "" for h in docs.values()], dtype=object)}
    upsert_columns(store, "c", columns, batch_size=2, payload=["doc_id", "text_hash"])


def test_stored_hashes_answer_per_block_and_one_id_scan_finds_gone_points_and_checksums(store):
    hashes = {"a": "00000000000000ff", "b": "0000000000000001", "c": None, "gone": "0000000000000002"}
    _store(store, hashes)
    asked = [point_id(d) for d in ("a", "b", "c", "new")]
    got = stored_hashes(store, "c", asked)
    assert got == {point_id("a"): 255, point_id("b"): 1, point_id("c"): 0}  # no hash stored: 0, never equal
    corpus = ["a", "b", "c", "new"]
    stored = id_checksum(point_id(d) for d in hashes)
    assert scan_ids(store, "c", point_keys(corpus), page=1) == (stored, [point_id("gone")])  # one point a page
    assert scan_ids(store, "c", point_keys([*corpus, "gone"]), page=3) == (stored, [])

    assert delete_points(store, "c", [point_id("gone")]) == 1
    assert store.count("c") == 3
    assert delete_points(store, "c", [point_id("gone")]) == 1  # idempotent: a re-run deletes nothing more
    assert store.count("c") == 3
    if store.where.embedded:  # the owner's table of every stored point (its class, without Ray here)
        from vectune.index.writer import StoreOwner

        docs = {d: f"{i + 1:016x}" for i, d in enumerate("pqrst")}
        docs["u"] = None
        store.create("s", Layout(size=2, distance="cosine", shard_points=2), stamp={})  # three shards
        upsert_columns(store, "s", {"doc_id": np.array(list(docs)), "embedding": np.ones((6, 2), dtype=np.float32),
                                    "text_hash": np.array([h or "" for h in docs.values()], dtype=object)},
                       batch_size=2, payload=["doc_id", "text_hash"])
        assert len(store.version_record("s")["parts"]) == 3
        store.close()
        owner = StoreOwner(store.where)
        try:
            keys, table_hashes = owner.hash_table("s")
        finally:
            owner.close()
        assert len(keys) == 6 and list(keys) == sorted(keys)
        table = StoredHashes(keys, table_hashes)
        pids, asked_keys = point_ids_and_keys(["r", "p", "u", "new"])
        assert table.lookup(pids, asked_keys) == {point_id("p"): 1, point_id("r"): 3, point_id("u"): 0}
        pids, asked_keys = point_ids_and_keys(["q"])
        assert table.lookup(pids, asked_keys) == {point_id("q"): 2}
        assert sorted(table.gone()) == sorted(point_id(d) for d in "st")  # no document asked for them
        # a key ending in zero bytes (numpy drops trailing NULs when it reads one item) comes back whole
        zeros = "12345678-9abc-def0-1234-567800000000"
        ended = StoredHashes(np.array([uuid.UUID(zeros).bytes], dtype="S16"), np.array([7], dtype=np.uint64))
        assert ended.gone() == [zeros]
        nothing = StoredHashes(np.array([], dtype="S16"), np.array([], dtype=np.uint64))
        assert nothing.lookup(pids, asked_keys) == {} and nothing.gone() == []
