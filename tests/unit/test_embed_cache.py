"""The embedding cache: keys (everything that changes a vector changes the key), lookups, compaction."""

from __future__ import annotations

import numpy as np

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


def test_pending_and_stored_vectors_are_found_and_compaction_merges_them_in_hash_order(tmp_path):
    from vectune.embed.cache import EmbeddingCache, text_hashes

    texts = [f"text {i}" for i in range(50)]
    hashes, vectors = text_hashes(texts), _vectors(50, 0)
    cache = EmbeddingCache(tmp_path)
    for lo, hi in ((0, 20), (20, 35)):  # two workers' shards
        cache.add(hashes[lo:hi], vectors[lo:hi])
    assert cache.compact(chunk=7) == 35  # chunks smaller than the store: the streaming path
    store = np.load(tmp_path / "store" / "hashes.npy")
    assert (np.diff(store.astype(np.float64)) > 0).all() and list(tmp_path.joinpath("pending").iterdir()) == []
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
    assert cache.compact(chunk=16) == 50
    found, got = EmbeddingCache(tmp_path).lookup(hashes)
    assert found.all()
    np.testing.assert_array_equal(got, vectors)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pending", "store"]  # nothing left over


def test_compaction_holds_one_chunk_of_vectors_not_the_store(tmp_path):
    """The driver compacts after every stage: its memory must not grow with the corpus. 200,000
    vectors of 384 floats (293 MiB) merge with a peak of a few chunks (tracemalloc counts
    numpy's buffers; the maps' pages are the kernel's and leave with each chunk's map)."""
    import tracemalloc

    from vectune.embed.cache import EmbeddingCache

    n, dim = 200_000, 384
    cache = EmbeddingCache(tmp_path)
    rng = np.random.default_rng(0)
    for lo in range(0, n, 20_000):
        cache.add(rng.integers(1, 2**63, size=20_000, dtype=np.uint64), np.ones((20_000, dim), np.float32))
    tracemalloc.start()
    try:  # as `compact_cache` does it: a cache object opened over the pending shards, then compacted
        assert EmbeddingCache(tmp_path).compact(chunk=16384) == n
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    raw = n * dim * 4
    assert peak < 0.25 * raw, f"compaction peaked at {peak / 2**20:.0f} MiB for {raw / 2**20:.0f} MiB of vectors"
