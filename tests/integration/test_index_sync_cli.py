"""`vectune reindex` syncing in place as a user (or the nightly job) runs it: real processes,
one SIGKILLed mid-sync, its re-run converging, and the --json report."""

from __future__ import annotations

import json

import pytest
from test_index_cli import _env, _open, kill_after_upserts, vectune

pytestmark = pytest.mark.ray

N_DOCS = 120


@pytest.fixture(scope="module")
def sliced(make_slice, shm):
    return make_slice(shm / "slice", n_docs=N_DOCS, n_queries=15, seed=5, spec={
        "model": {"max_seq_length": 64},
        "index": {"batch_size": 4, "embed_batch_size": 64, "keep": 1, "verify_sample": 4,
                  "qdrant": {"path": str(shm / "qdrant")}}})


def _reindex_json(sliced, *args) -> dict:
    out = vectune("reindex", sliced.spec_path, *args, "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.slow  # CI time (100 s): the default tier's failed-sync rerun is test_sync_stage.py's
def test_a_killed_sync_reruns_to_the_new_corpus_and_reports_what_it_did(sliced, shm):
    first = _reindex_json(sliced, "--run-id", "c1")
    assert first["mode"] == "full" and first["added"] == N_DOCS

    lines = sliced.corpus_path.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    for r in rows[:20]:
        r["text"] += " Retracted in 2026."
    kept = rows[:-4]  # the last 4 documents leave the corpus
    sliced.corpus_path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    edited = {r["_id"] for r in rows[:20]}

    kill_after_upserts(sliced, shm, "c2", 2)  # mid-sync, after its 2nd upsert request

    from vectune.index import collections as cols

    client = _open(sliced)
    try:
        assert cols.live_collection(client, "slice") == "slice__c1"  # readers kept their collection
        stamp = cols.read_stamp(client, "slice__c1")
        assert stamp["sync"]["state"] == "running" and stamp["sync"]["run_id"] == "c2"
        half = {r.payload["doc_id"]: r.payload["text"] for page in client.scroll("slice__c1", ["doc_id", "text"])
                for r in page}
    finally:
        client.close()
    assert len(half) == N_DOCS  # the deletes come after the upserts: nothing was deleted yet
    assert 0 < sum("Retracted in 2026." in half[d] for d in edited) < 20

    result = _reindex_json(sliced, "--run-id", "c2")
    assert result["mode"] == "incremental" and result["reason"] is None and result["seconds"] > 0
    assert result["added"] == 0 and result["deleted"] == 4
    assert 0 < result["updated"] < 20 and result["unchanged"] == N_DOCS - 4 - result["updated"]
    assert result["verified"]["min_cosine"] > 0.999

    client = _open(sliced)
    try:
        stored = {r.payload["doc_id"]: r.payload["text"] for page in client.scroll("slice__c1", ["doc_id", "text"])
                  for r in page}
        assert cols.read_stamp(client, "slice__c1")["sync"]["state"] == "done"
    finally:
        client.close()
    assert set(stored) == {r["_id"] for r in kept}
    assert all(stored[d].endswith("Retracted in 2026.") for d in edited)

    nothing = _reindex_json(sliced)  # the nightly job the day after: no change
    assert (nothing["mode"], nothing["written"], nothing["unchanged"]) == ("incremental", 0, N_DOCS - 4)
    table = vectune("reindex", sliced.spec_path, "--full", env=_env(COLUMNS="200"))
    assert table.returncode == 0 and "--full asked for a new collection" in table.stdout
