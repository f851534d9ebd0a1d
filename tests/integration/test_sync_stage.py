"""Incremental sync for real: a 160-document SciFact slice whose corpus file changes between
re-indexes (documents added, rewritten, removed), a random-weight 384-d model, a local Ray and the
embedded engine (Qdrant Edge) on tmpfs. Each result is compared with what a full rebuild of the
same corpus, in another store and with a cold embedding cache, holds."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import yaml

from vectune.errors import IndexingError
from vectune.index import connect
from vectune.index import collections as cols

pytestmark = pytest.mark.ray

N_DOCS = 160
#: shards of 64 points (`index.shard_points`): every build and sync here spans three shards, so
#: updates, deletions and new points are checked across them against a full rebuild
INDEX = {"batch_size": 8, "embed_batch_size": 64, "keep": 1, "verify_sample": 8, "shard_points": 64}


@pytest.fixture(scope="module")
def sliced(make_slice, shm, random_model):
    """The slice on a random-weight model: syncs are about which points change, not what the
    model ranks (CI time)."""
    return make_slice(shm / "slice", n_docs=N_DOCS, n_queries=20, seed=3,
                      spec={"model": {"max_seq_length": 64, "base": random_model},
                            "index": {**INDEX, "qdrant": {"path": str(shm / "qdrant")}}})


@pytest.fixture(scope="module")
def spec(sliced, ray_local):
    return sliced.load()


@pytest.fixture(scope="module")
def first(spec):
    """The first re-index of the slice (run f0): a full build, since no alias exists yet."""
    from vectune.pipeline import reindex

    return reindex(spec, run_id="f0")


def _lines(sliced) -> list[str]:
    return sliced.corpus_path.read_text(encoding="utf-8").splitlines()


def _write(sliced, lines: list[str]) -> None:
    sliced.corpus_path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _change(sliced, scifact, *, modified: int, added: int, removed: int, seed: int) -> dict[str, set]:
    """Rewrite the slice's corpus: `modified` texts edited, `removed` documents dropped,
    `added` SciFact documents from outside the slice appended. Returns the ids of each."""
    rng = random.Random(seed)
    rows = [json.loads(line) for line in _lines(sliced)]
    ids = [r["_id"] for r in rows]
    picked = rng.sample(ids, modified + removed)
    edit, drop = set(picked[:modified]), set(picked[modified:])
    outside = sorted(set(scifact.corpus) - set(ids))
    new = rng.sample(outside, added)
    out = []
    for r in rows:
        if r["_id"] in drop:
            continue
        if r["_id"] in edit:
            r = {**r, "text": r["text"] + f" Revised {seed}: the effect was not replicated."}
        out.append(json.dumps(r))
    out += [scifact.corpus[d] for d in new]
    _write(sliced, out)
    return {"modified": edit, "removed": drop, "added": set(new)}


def _points(spec) -> dict[str, tuple[np.ndarray, dict]]:
    """doc_id -> (unit vector, payload) of every point behind the spec's alias."""
    store = connect(spec)
    try:
        live = cols.live_collection(store, cols.alias_name(spec))
        ids = [r.id for page in store.scroll(live) for r in page]
        points = store.retrieve(live, ids, ["doc_id", "title", "text", "text_hash"], vectors=True)
    finally:
        store.close()
    out = {}
    for p in points:
        v = np.asarray(p.vector, dtype=np.float32)
        out[p.payload["doc_id"]] = (v / np.linalg.norm(v), p.payload)
    return out


def _rebuilt(sliced, shm, name: str):
    """A spec for a full rebuild of the slice's current corpus: its own store and runs folder
    (a cold embedding cache, so its vectors are computed afresh)."""
    from vectune.pipeline import reindex
    from vectune.spec import load_spec

    mapping = yaml.safe_load(sliced.spec_path.read_text())
    mapping["index"]["qdrant"] = {"path": str(shm / f"qdrant-{name}")}
    mapping["runtime"]["runs"] = str(shm / f"runs-{name}")
    path = sliced.root / f"spec-{name}.yaml"
    path.write_text(yaml.safe_dump(mapping))
    ref = load_spec(path)
    result = reindex(ref, run_id=name, full=True)
    assert result["mode"] == "full"
    return ref


def _assert_equal_to_rebuild(spec, ref) -> None:
    synced, rebuilt = _points(spec), _points(ref)
    assert set(synced) == set(rebuilt)
    cos = np.array([float(synced[d][0] @ rebuilt[d][0]) for d in rebuilt])
    assert cos.min() >= 0.9999, (cos.min(), sorted(rebuilt)[int(cos.argmin())])
    assert all(synced[d][1] == rebuilt[d][1] for d in rebuilt)  # doc_id, title, text, text_hash


def test_first_reindex_is_a_full_build_with_text_hashes(spec, first):
    assert first["mode"] == "full" and "serves no collection" in first["reason"]
    assert first["points"] == first["added"] == N_DOCS
    client = connect(spec)
    try:
        stamp = cols.read_stamp(client, first["name"])
        point = next(iter(client.scroll(first["name"], ["text_hash"], page=1)))[0]
        record = client.version_record(first["name"])
    finally:
        client.close()
    # 160 points in shards of 64, filled and indexed one at a time
    assert record["parts"] == ["shard", "shard-1", "shard-2"] and record["index"]["shards"] == 3
    assert record["index"]["points"] == N_DOCS and record["shard_points"] == 64
    assert stamp["format"] == cols.FORMAT and stamp["precision"] == "fp32"
    assert stamp["payload"] == ["doc_id", "text", "text_hash", "title"]
    assert len(point.payload["text_hash"]) == 16


def test_a_cold_reindex_through_actors_loads_the_model_nowhere_but_in_them(spec, shm, monkeypatch):
    """A re-index whose encoders are actors, from a driver without the model: the collection's
    dimension comes from the model folder's configs and the verification sample's fresh
    embeddings are the vectors the actors computed as those documents passed, so no Ray task
    loads the model a second and a third time. Verified again on its own (nothing computed them
    then), the sample is encoded again, in a task, and matches the stored (the actors') vectors,
    which shows those were fresh embeddings."""
    from vectune.data import DomainData
    from vectune.embed import apart
    from vectune.index import verify as verify_mod
    from vectune.pipeline import reindex

    tasks: list[str] = []
    real = apart._task
    monkeypatch.setattr(apart, "here", lambda encoder=None: False)  # as in a driver without torch
    monkeypatch.setattr(apart, "_task", lambda fn, gpus: tasks.append(fn.__name__) or real(fn, gpus))
    pooled = spec.derived(
        runtime=spec.runtime.model_copy(update={"driver_encode_max": 0, "runs": str(shm / "pooled-runs")}),
        index=spec.index.model_copy(update={"qdrant": spec.index.qdrant.model_copy(
            update={"path": str(shm / "pooled-qdrant")})}))

    cold = reindex(pooled, run_id="p0")
    assert cold["mode"] == "full" and cold["points"] == N_DOCS
    assert cold["verified"]["sampled"] == INDEX["verify_sample"] and cold["verified"]["encoded_again"] == 0
    assert tasks == []

    store = connect(pooled)
    try:
        again = verify_mod.verify(store, cold["name"], pooled, DomainData(pooled), cold["model"]["path"], seed="p1")
    finally:
        store.close()
    assert again["sampled"] == INDEX["verify_sample"] and again["encoded_again"] == INDEX["verify_sample"]
    assert tasks == ["_encode"] and again["min_cosine"] > 0.999


def test_mixed_changes_sync_in_place_to_what_a_full_rebuild_holds(spec, sliced, scifact, first, shm):
    from vectune.pipeline import reindex
    from vectune.runs import Run

    changed = _change(sliced, scifact, modified=6, added=4, removed=3, seed=1)
    result = reindex(spec, run_id="s1")
    assert result["mode"] == "incremental" and result["reason"] is None
    assert result["name"] == first["name"] == result["previous"]  # the same collection, still live
    assert (result["added"], result["updated"], result["deleted"]) == (4, 6, 3)
    assert result["unchanged"] == N_DOCS - 3 - 6 and result["points"] == N_DOCS + 4 - 3
    assert result["written"] == 4 + 6 + 3  # points upserted or deleted: the changes, nothing else
    assert result["verified"]["sampled"] == 8 and result["verified"]["min_cosine"] > 0.999
    # the sampled documents were just embedded by the driver's model: their vectors are checked
    # against those fresh embeddings, not encoded a second time
    assert result["verified"]["encoded_again"] == 0

    _assert_equal_to_rebuild(spec, _rebuilt(sliced, shm, "ref1"))
    stored = _points(spec)
    assert not changed["removed"] & set(stored) and changed["added"] <= set(stored)
    assert all("Revised 1" in stored[d][1]["text"] for d in changed["modified"])

    client = connect(spec)
    try:
        assert cols.live_collection(client, "slice") == first["name"]
        stamp = cols.read_stamp(client, first["name"])
    finally:
        client.close()
    from vectune.data import DomainData

    sha = DomainData(spec).corpus.sha256
    assert stamp["corpus_sha256"] == sha and stamp["corpus_count"] == N_DOCS + 1
    assert stamp["sync"]["state"] == "done" and stamp["sync"]["run_id"] == "s1"
    assert (stamp["sync"]["added"], stamp["sync"]["updated"], stamp["sync"]["deleted"]) == (4, 6, 3)
    manifest = Run.open(spec, "s1").manifest
    assert manifest["collection"]["mode"] == "incremental"
    assert manifest["collection"]["sync"]["corpus_sha256"] == sha and manifest["collection"]["sync"]["finished"]
    assert manifest["stages"]["reindex"]["status"] == "done"
    assert manifest["stages"]["reindex"]["outputs"]["updated"] == 6


def test_a_driver_without_the_model_syncs_a_small_change_in_one_ray_task(spec, sliced, scifact, first, monkeypatch):
    """A driver that holds no model (a scheduled sync's) has the few changed documents encoded by
    one Ray task, never loading the model itself; the verification reuses that task's vectors (no
    second task), and the stored vectors are the model's for the new texts."""
    from vectune.embed import Encoder, encoder_config
    from vectune.embed import apart as apart_mod
    from vectune.pipeline import reindex

    tasks = []
    real = apart_mod._task
    monkeypatch.setattr(apart_mod, "here", lambda encoder=None: False)  # as in a driver without torch
    monkeypatch.setattr(apart_mod, "_task", lambda fn, gpus: tasks.append(fn.__name__) or real(fn, gpus))
    changed = _change(sliced, scifact, modified=2, added=1, removed=0, seed=5)
    result = reindex(spec, run_id="s-apart")
    assert result["mode"] == "incremental" and (result["added"], result["updated"]) == (1, 2)
    assert tasks == ["_remembered"]  # the verification sample was among them: reused, not encoded again
    assert result["verified"]["encoded_again"] == 0 and result["verified"]["min_cosine"] > 0.999
    stored = _points(spec)
    docs = sorted(changed["modified"] | changed["added"])
    fresh = Encoder(encoder_config(spec, first["model"]["path"], role="document", cache=False)).encode(
        [stored[d][1]["text"] for d in docs])
    fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
    assert min(float(stored[d][0] @ v) for d, v in zip(docs, fresh)) > 0.9999


def test_an_empty_diff_writes_nothing(spec, sliced, first, monkeypatch):
    import vectune.data
    from vectune import _faults
    from vectune.pipeline import reindex

    before = _points(spec)
    _faults.switch(**{"index.upsert": {"after": 1}})  # any upsert request would now fail the sync
    try:
        with monkeypatch.context() as patched:
            # the untouched file is never parsed again: its ids are checked against the stamp's checksum
            patched.setattr(vectune.data, "check_corpus", lambda *a: pytest.fail("the corpus was parsed"))
            same_file = reindex(spec, run_id="e1")
        assert same_file["mode"] == "incremental" and same_file["written"] == 0
        assert "unchanged since the last build or sync" in same_file["sync"]["shortcut"]

        lines = _lines(sliced)
        _write(sliced, lines[::-1])  # the same documents in another order: another file hash, the same corpus
        reordered = reindex(spec, run_id="e2")
    finally:
        _faults.clear()
    assert reordered["mode"] == "incremental" and "shortcut" not in reordered["sync"]
    assert (reordered["added"], reordered["updated"], reordered["deleted"], reordered["written"]) == (0, 0, 0, 0)
    assert reordered["unchanged"] == reordered["points"] == len(lines)
    after = _points(spec)
    assert set(after) == set(before)
    assert all(np.array_equal(after[d][0], before[d][0]) and after[d][1] == before[d][1] for d in before)


@pytest.mark.parametrize("fault", ["empty text", "duplicate id"])
def test_a_bad_corpus_stops_the_sync_in_its_diff_before_anything_is_written(spec, sliced, first, fault):
    """The sync's pass over the corpus is its validation pass too: a document with empty text
    (found where it is read) or a repeated id (found once every document is read) stops the
    sync with the file and line (exit 2), before any write and before the stamp says `running`."""
    from vectune.errors import DataError
    from vectune.pipeline import reindex

    lines = _lines(sliced)
    before = _points(spec)
    rows = [json.loads(line) for line in lines]
    rows[0]["text"] = rows[0]["text"] + " Revised."  # a real change ahead of the fault: never written
    if fault == "empty text":
        at = len(rows) // 2
        rows[at] = {**rows[at], "title": "", "text": " "}
        message = f"document {rows[at]['_id']!r} has empty text"
    else:
        at = len(rows)
        rows.append(dict(rows[3]))
        message = f"duplicate document id {rows[3]['_id']!r}"
    _write(sliced, [json.dumps(r) for r in rows])
    try:
        with pytest.raises(DataError) as info:
            reindex(spec, run_id=f"bad-{fault.split()[0]}")
    finally:
        _write(sliced, lines)
    assert info.value.exit_code == 2 and message in str(info.value)
    assert f"{sliced.corpus_path.name}:{at + 1}" in str(info.value)
    after = _points(spec)
    assert set(after) == set(before)
    assert all(np.array_equal(after[d][0], before[d][0]) and after[d][1] == before[d][1] for d in before)
    client = connect(spec)
    try:
        stamp = cols.read_stamp(client, first["name"])
    finally:
        client.close()
    assert (stamp.get("sync") or {}).get("state") != "running"


def test_a_failed_sync_keeps_serving_and_its_rerun_converges(spec, sliced, scifact, first, shm, monkeypatch):
    """A sync that dies mid-write leaves the alias and its collection serving and `sync.state:
    running` on record; the re-run converges on what a full rebuild holds. Both go through the
    encoder actors (more changed documents than one Ray batch), from a driver without the model:
    the write tasks bring back the vectors the actors computed for the verification sample's
    documents, so no Ray task loads the model to encode them again, and they are the model's."""
    from pathlib import Path

    from vectune import _faults
    from vectune.embed import apart as apart_mod
    from vectune.pipeline import reindex

    tasks = []
    real = apart_mod._task
    monkeypatch.setattr(apart_mod, "here", lambda encoder=None: False)  # as in a driver without torch
    monkeypatch.setattr(apart_mod, "_task", lambda fn, gpus: tasks.append(fn.__name__) or real(fn, gpus))
    # 90 changed rows, and 74 after the 2 upsert requests that land: more than one Ray batch (64)
    # either time, so both go through the encoder actors and the write tasks
    _change(sliced, scifact, modified=70, added=20, removed=5, seed=2)
    _faults.switch(**{"index.upsert": {"after": 2}})  # the sync dies after 2 of its 12 upsert requests
    try:
        with pytest.raises(IndexingError, match="injected failure after 2 upsert batches"):
            reindex(spec, run_id="k1")
    finally:
        _faults.clear()
    client = connect(spec)
    try:
        assert cols.live_collection(client, "slice") == first["name"]  # readers are still served
        stamp = cols.read_stamp(client, first["name"])
    finally:
        client.close()
    assert stamp["sync"]["state"] == "running" and stamp["sync"]["run_id"] == "k1"

    # the failed run's actors cached every changed vector, and a cached vector is no fresh
    # embedding (verification would encode the sample again): with the cache cleared, the
    # re-run computes them all, and its verification reuses what the actors computed
    import shutil

    shutil.rmtree(Path(spec.runs_root()) / "_cache" / "embeddings")
    again = reindex(spec, run_id="k1")
    assert again["mode"] == "incremental"
    # the 2 requests of 8 points that landed count as unchanged now; the deletes run once
    assert again["added"] + again["updated"] == 70 + 20 - 2 * INDEX["batch_size"] > INDEX["embed_batch_size"]
    assert again["deleted"] == 5
    assert tasks == []  # neither the write nor the verification loaded the model in a task
    assert again["verified"]["sampled"] == INDEX["verify_sample"] and again["verified"]["encoded_again"] == 0
    assert again["verified"]["min_cosine"] > 0.999
    _assert_equal_to_rebuild(spec, _rebuilt(sliced, shm, "ref2"))
    client = connect(spec)
    try:
        assert cols.read_stamp(client, first["name"])["sync"]["state"] == "done"
    finally:
        client.close()


def test_another_distance_or_model_builds_a_new_collection(spec, sliced, first, shm):
    from vectune.pipeline import reindex
    from vectune.spec import load_spec

    mapping = yaml.safe_load(sliced.spec_path.read_text())
    mapping["index"]["distance"] = "dot"
    path = sliced.root / "spec-dot.yaml"
    path.write_text(yaml.safe_dump(mapping))
    dot = reindex(load_spec(path), run_id="d1")
    assert dot["mode"] == "full" and dot["reason"] == "distance changed: live 'cosine', now 'dot'"
    assert dot["name"] == "slice__d1" and dot["previous"] == first["name"]

    from vectune.embed.models import random_model

    other = random_model(shm / "other", seed=1)  # another model (another fingerprint), same dimension
    moved = reindex(spec, model=other, run_id="m1")
    assert moved["mode"] == "full" and moved["reason"].startswith("model changed")
    assert moved["name"] == "slice__m1" and moved["previous"] == "slice__d1"
    forced = reindex(spec, model=other, run_id="m2", full=True)  # same model and settings, but --full
    assert forced["mode"] == "full" and forced["reason"] == "--full asked for a new collection"
    assert reindex(spec, model=other, run_id="m3")["mode"] == "incremental"

