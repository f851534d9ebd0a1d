"""Embedding-cache keys: everything that changes a vector changes the key."""

from __future__ import annotations

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
