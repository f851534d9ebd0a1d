"""The embedding cache: keys (everything that changes a vector changes the key), lookups, compaction."""

from __future__ import annotations

import numpy as np
import pytest

from vectune.embed.cache import cache_key

BASE = {"max_seq_length": 256, "prefix": "", "normalize": True}


def test_fp32_key_is_the_key_from_before_precision_existed():
    # caches written before model.precision was added stay valid (sha256 of the 4-item list)
    import hashlib
    import json

    legacy = hashlib.sha256(json.dumps(["fp", 256, "", True]).encode()).hexdigest()[:20]
    assert cache_key("fp", **BASE) == cache_key("fp", **BASE, precision="fp32") == legacy


def test_each_setting_that_changes_a_vector_changes_the_key():
    keys = {
        cache_key("fp", **BASE),
        cache_key("fp", **BASE, precision="bf16"),
        cache_key("fp2", **BASE),
        cache_key("fp", **(BASE | {"max_seq_length": 128})),
        cache_key("fp", **(BASE | {"prefix": "passage: "})),
        cache_key("fp", **(BASE | {"normalize": False})),
    }
    assert len(keys) == 6


def test_an_int8_cache_is_keyed_by_its_recipe(monkeypatch):
    """Another int8 recipe gives other vectors: its cache, its scores and its stamp differ."""
    from vectune.embed import EncoderConfig, int8
    from vectune.embed.encoder import precision_identity

    config = EncoderConfig(model_path="/m", fingerprint="fp", cache_root="/cache", precision="int8")
    assert precision_identity("fp32") == "fp32" and precision_identity("int8") == f"int8-{int8.tag()}"
    before = config.cache_dir
    monkeypatch.setattr(int8, "RECIPE", int8.RECIPE + 1)
    assert config.cache_dir != before


# -- adding, looking up, compacting -------------------------------------------------------------
def _vectors(n: int, seed: int, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_pending_and_stored_vectors_are_found_and_compaction_appends_only_the_new_ones(tmp_path):
    from vectune.embed.cache import EmbeddingCache, _IndexFile, text_hashes

    texts = [f"text {i}" for i in range(50)]
    hashes, vectors = text_hashes(texts), _vectors(50, 0)
    cache = EmbeddingCache(tmp_path)
    for lo, hi in ((0, 20), (20, 35)):  # two workers' shards
        cache.add(hashes[lo:hi], vectors[lo:hi])
    assert cache.compact() == 35
    index = _IndexFile(cache.index_path)
    stored, rows = index.read()
    assert index.count == 35 and (stored[1:] > stored[:-1]).all() and sorted(rows) == list(range(35))
    assert list(tmp_path.joinpath("pending").iterdir()) == []
    raw = tmp_path / "store" / "vectors.f32"
    assert raw.stat().st_size == 35 * 8 * 4
    # a later stage: new shards beside the store, one of them repeating a stored text with
    # another vector (a stored vector is never replaced)
    cache.add(hashes[30:50], np.concatenate([_vectors(5, 9), vectors[35:50]]))
    reader = EmbeddingCache(tmp_path)  # what an encoder actor sees before the next compaction
    assert len(reader) == 50
    found, got = reader.lookup(hashes[::-1])
    assert found.all()
    np.testing.assert_array_equal(got, vectors[::-1])
    missing, none = reader.lookup(text_hashes(["never seen"]))
    assert not missing.any() and none is None
    head = raw.read_bytes()
    assert cache.compact() == 50
    assert raw.read_bytes()[:len(head)] == head  # appended: what was stored is not rewritten
    assert raw.stat().st_size == 50 * 8 * 4
    found, got = EmbeddingCache(tmp_path).lookup(hashes)
    assert found.all()
    np.testing.assert_array_equal(got, vectors)
    found, got = reader.lookup(hashes[:35])  # a reader still on the old index reads the same vectors
    np.testing.assert_array_equal(got, vectors[:35])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pending", "store"]  # nothing left over
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["index.bin", "vectors.f32"]


def test_rows_a_dead_compaction_appended_are_cut_by_the_next(tmp_path):
    from vectune.embed.cache import EmbeddingCache, text_hashes

    hashes, vectors = text_hashes([f"t{i}" for i in range(30)]), _vectors(30, 1)
    cache = EmbeddingCache(tmp_path)
    cache.add(hashes[:10], vectors[:10])
    cache.compact()
    with open(tmp_path / "store" / "vectors.f32", "ab") as fh:  # appended, never indexed
        fh.write(np.ones((7, 8), np.float32).tobytes())
    cache.add(hashes[10:], vectors[10:])
    assert cache.compact() == 30
    assert (tmp_path / "store" / "vectors.f32").stat().st_size == 30 * 8 * 4
    found, got = EmbeddingCache(tmp_path).lookup(hashes)
    np.testing.assert_array_equal(got, vectors)


def test_a_store_of_the_earlier_layout_is_read_and_converted_by_its_next_compaction(tmp_path):
    from vectune.embed.cache import EmbeddingCache, text_hashes

    hashes, vectors = text_hashes([f"t{i}" for i in range(40)]), _vectors(40, 2)
    order = np.argsort(hashes[:25])
    (tmp_path / "store").mkdir()
    np.save(tmp_path / "store" / "hashes.npy", hashes[:25][order])  # hashes.npy + vectors.npy, hash order
    np.save(tmp_path / "store" / "vectors.npy", vectors[:25][order])
    old = EmbeddingCache(tmp_path)
    found, got = old.lookup(hashes[:25])
    assert found.all()
    np.testing.assert_array_equal(got, vectors[:25])
    old.add(hashes[25:], vectors[25:])
    assert old.compact() == 40
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["index.bin", "vectors.f32"]
    found, got = EmbeddingCache(tmp_path).lookup(hashes)
    np.testing.assert_array_equal(got, vectors)


def test_compaction_in_groups_and_chunks_keeps_each_text_once_and_the_first_vector(tmp_path, monkeypatch):
    """Pending shards merged a group at a time, the stored index streamed in small chunks: every
    text is stored once, with the vector it arrived with first (a later shard's repeat, in the
    same group or another, and a repeat of a stored text are skipped), rows in arrival order,
    and the index sorted. Counting a cache with pending shards streams the index too."""
    from vectune.embed import cache as module
    from vectune.embed.cache import EmbeddingCache, _IndexFile, text_hashes

    monkeypatch.setattr(module, "_GROUP_ROWS", 25)
    monkeypatch.setattr(module, "_MERGE_ROWS", 7)
    hashes, vectors = text_hashes([f"t{i}" for i in range(200)]), _vectors(200, 3)
    cache = EmbeddingCache(tmp_path)
    cache.add(hashes[:60], vectors[:60])
    cache.compact()
    for lo in range(40, 200, 20):  # shards of 20 texts, each repeating the previous one's last 10
        cache.add(hashes[lo:lo + 30], np.concatenate([vectors[lo:lo + 20] + 1, vectors[lo + 20:lo + 30]])
                  if lo < 60 else vectors[lo:lo + 30])
    assert len(EmbeddingCache(tmp_path)) == 200  # pending counted against the streamed index
    assert cache.compact() == 200
    assert list((tmp_path / "pending").iterdir()) == []
    index = _IndexFile(cache.index_path)
    stored, rows = index.read()
    assert index.count == 200 and (stored[1:] > stored[:-1]).all() and sorted(rows) == list(range(200))
    found, got = EmbeddingCache(tmp_path).lookup(hashes)
    assert found.all()
    np.testing.assert_array_equal(got, vectors)  # the stored first 60 were never replaced
    assert (tmp_path / "store" / "vectors.f32").stat().st_size == 200 * 8 * 4


def test_a_store_with_the_npz_index_is_read_and_converted_by_its_next_compaction(tmp_path):
    from vectune.embed.cache import EmbeddingCache, text_hashes

    hashes, vectors = text_hashes([f"t{i}" for i in range(30)]), _vectors(30, 5)
    (tmp_path / "store").mkdir()
    vectors[:20].tofile(tmp_path / "store" / "vectors.f32")
    order = np.argsort(hashes[:20])
    np.savez(tmp_path / "store" / "index.npz", hashes=hashes[:20][order], rows=np.arange(20)[order],
             count=np.int64(20), dim=np.int64(8))
    old = EmbeddingCache(tmp_path)
    assert len(old) == 20
    found, got = old.lookup(hashes[:20])
    np.testing.assert_array_equal(got, vectors[:20])
    old.add(hashes[15:], vectors[15:])
    assert old.compact() == 30
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["index.bin", "vectors.f32"]
    found, got = EmbeddingCache(tmp_path).lookup(hashes)
    np.testing.assert_array_equal(got, vectors)


def _peak_rss_during(fn) -> tuple[int, int]:
    """(RSS before, peak RSS while `fn` runs) of this process in bytes, sampled every 5 ms: the
    pages a file map touches count here, where tracemalloc does not see them."""
    import threading
    import time

    import psutil

    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return before, peak[0]


def test_compaction_holds_one_shard_of_vectors_not_the_store(tmp_path):
    """The driver compacts after every stage: its memory must not grow with the corpus. 200,000
    vectors of 384 floats (293 MiB) in 1,000-row shards, as encoder workers write them, then
    100,000 more: each compaction's peak RSS, mapped file pages included, stays a small part of
    the vectors. (The layout before mapped the whole store and the pending vectors to merge them
    in hash order: +436 MiB of mapped pages for 300,000 vectors, which tracemalloc never saw.)"""
    from vectune.embed.cache import EmbeddingCache

    n, dim = 200_000, 384
    cache = EmbeddingCache(tmp_path)
    rng = np.random.default_rng(0)

    def add(count: int) -> None:
        for _ in range(0, count, 1000):
            cache.add(rng.integers(1, 2**63, size=1000, dtype=np.uint64), rng.random((1000, dim), np.float32))

    add(n)
    raw = n * dim * 4
    # as `compact_cache` does it: a cache object opened over the pending shards, then compacted
    before, peak = _peak_rss_during(lambda: EmbeddingCache(tmp_path).compact())
    assert peak - before < 0.15 * raw, f"compaction grew RSS by {(peak - before) / 2**20:.0f} MiB"
    add(n // 2)
    before, peak = _peak_rss_during(lambda: EmbeddingCache(tmp_path).compact())
    assert peak - before < 0.15 * raw, f"the second compaction grew RSS by {(peak - before) / 2**20:.0f} MiB"
    assert len(EmbeddingCache(tmp_path)) == n + n // 2


def test_rows_are_read_by_pread_exactly_as_stored_in_both_layouts(tmp_path):
    """The reader's rows (`_RowFile`, pread in runs of consecutive rows): any order, repeats,
    runs, none; the raw file and an `.npy` of the earlier layout; a row past the end refused."""
    from vectune.embed.cache import _RowFile

    stored = _vectors(1000, 4, dim=7)
    stored.tofile(tmp_path / "v.f32")
    np.save(tmp_path / "v.npy", stored)
    picks = [[3], [5, 5, 6, 7, 100, 2, 999, 0], np.random.default_rng(1).integers(0, 1000, 500), list(range(1000)), []]
    for rows in (_RowFile(tmp_path / "v.f32", 1000, 7), _RowFile.of_npy(tmp_path / "v.npy")):
        assert rows.shape == (1000, 7)
        for pick in picks:
            pick = np.asarray(pick, dtype=np.int64)
            assert np.array_equal(rows[pick], stored[pick])
        with pytest.raises(IndexError):
            rows[np.array([1000])]


_COMPACT_IN_CHILD = """
import sys
import numpy as np
from vectune.embed import cache as module
from vectune.embed.cache import EmbeddingCache
if len(sys.argv) > 2:
    module._MERGE_ROWS = int(sys.argv[2])

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) from here on
before = status("VmRSS")
EmbeddingCache(sys.argv[1]).compact()
print(status("VmHWM") - before)
"""


def _compaction_growth(root, *args) -> int:
    """Peak RSS growth (bytes) of one compaction of `root`, in a fresh process: a heap the test
    process already grew would hide what the compaction allocates."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _COMPACT_IN_CHILD, str(root), *args], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


def test_compacting_into_a_large_store_holds_a_group_not_the_index(tmp_path):
    """What the driver holds to compact a few new vectors into a store of 4M texts (its index
    alone 64 MiB): a chunk of the index and one group, never the whole index (read whole, as
    the layout before did, it grows the process by the index's size and more: checked here by
    making the chunk the whole index). The stored vectors are a sparse file: a compaction never
    reads them."""
    import shutil

    from vectune.embed.cache import EmbeddingCache, _IndexFile, text_hashes

    n, dim = 4_000_000, 8
    (tmp_path / "store").mkdir()
    with open(tmp_path / "store" / "vectors.f32", "wb") as fh:
        fh.truncate(n * dim * 4)
    stored = np.unique(np.random.default_rng(0).integers(1, 2**63, size=n, dtype=np.uint64))
    rows = np.random.default_rng(1).permutation(len(stored)).astype(np.int64)
    _IndexFile.write(tmp_path / "store" / "index.bin", [(stored, rows)], len(stored), dim)
    keep, total = stored[::997].copy(), len(stored)
    del stored, rows
    texts = [f"new {i}" for i in range(1000)]
    EmbeddingCache(tmp_path).add(text_hashes(texts), _vectors(1000, 6))
    whole = tmp_path.parent / "whole"
    shutil.copytree(tmp_path, whole)

    grew = _compaction_growth(tmp_path)
    assert grew < 24 * 2**20, f"compaction grew RSS by {grew / 2**20:.0f} MiB"
    assert _compaction_growth(whole, str(10**8)) > 64 * 2**20  # the probe sees an index read whole
    after = EmbeddingCache(tmp_path)
    assert len(after) == total + 1000
    found, _ = after.lookup(text_hashes(texts))
    assert found.all()
    index = after._index()[0]
    assert (index[1:] > index[:-1]).all() and (index[np.searchsorted(index, keep)] == keep).all()


def test_compacting_many_pending_shards_holds_one_group_of_their_hashes(tmp_path):
    """A cold re-index leaves one pending shard per encoder batch: 2,000 of them (2M texts)
    here. Opening the cache reads none of their hashes, and the compaction reads them a group
    at a time: its peak stays far below the 16 MB the hashes alone take (reading them all at
    open, as the cache did before, took over 48 MiB here)."""
    from vectune.embed.cache import EmbeddingCache, _IndexFile

    cache = EmbeddingCache(tmp_path)
    rng = np.random.default_rng(2)
    for _ in range(2000):
        cache.add(rng.integers(1, 2**63, size=1000, dtype=np.uint64), np.ones((1000, 2), np.float32))
    grew = _compaction_growth(tmp_path)
    assert grew < 24 * 2**20, f"compaction grew RSS by {grew / 2**20:.0f} MiB"
    assert _IndexFile(EmbeddingCache(tmp_path).index_path).count == 2_000_000
