"""The output dimension a re-index creates its collection with, read from the model folder's
configs where they state it: a driver without the model then starts no Ray task (a fresh worker
importing torch and loading the model, seconds on every re-index) to learn one number."""

from __future__ import annotations

import json
import shutil

import pytest


def _loaded_dimension(path: str) -> int:
    from sentence_transformers import SentenceTransformer

    from vectune.embed.models import embedding_dimension

    return embedding_dimension(SentenceTransformer(path, device="cpu"))


def test_the_declared_dimension_is_the_loaded_models(random_model, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models

    from vectune.embed.models import declared_dimension, resolve_model

    packaged = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert declared_dimension(packaged) == _loaded_dimension(packaged) == 384
    assert declared_dimension(random_model) == _loaded_dimension(random_model) == 384

    # a Dense projection changes the size: the last Dense layer's says it
    base = SentenceTransformer(random_model, device="cpu")
    projected = SentenceTransformer(modules=[*base, st_models.Dense(384, 96), st_models.Normalize()], device="cpu")
    projected.save(str(tmp_path / "projected"))
    assert declared_dimension(str(tmp_path / "projected")) == _loaded_dimension(str(tmp_path / "projected")) == 96

    # a saved truncate_dim (a Matryoshka model's): the loaded model truncates to it, and so does this
    truncated = tmp_path / "truncated"
    shutil.copytree(random_model, truncated)
    st_config = json.loads((truncated / "config_sentence_transformers.json").read_text())
    (truncated / "config_sentence_transformers.json").write_text(json.dumps({**st_config, "truncate_dim": 128}))
    assert declared_dimension(str(truncated)) == _loaded_dimension(str(truncated)) == 128

    # two pooling modes side by side double the size, in today's config and in the older flags
    for name, config in (("modes", {"embedding_dimension": 384, "pooling_mode": ["mean", "max"]}),
                         ("flags", {"word_embedding_dimension": 384, "pooling_mode_mean_tokens": True,
                                    "pooling_mode_max_tokens": True, "pooling_mode_cls_token": False})):
        shutil.copytree(random_model, tmp_path / name)
        (tmp_path / name / "1_Pooling" / "config.json").write_text(json.dumps(config))
        assert declared_dimension(str(tmp_path / name)) == _loaded_dimension(str(tmp_path / name)) == 768


def test_configs_that_cannot_say_for_sure_give_no_dimension(random_model, tmp_path):
    from vectune.embed.models import declared_dimension

    assert declared_dimension(str(tmp_path / "missing")) is None
    assert declared_dimension("sentence-transformers/some-hub-model") is None

    # a module of another type may change the size: only a loaded model knows
    other = tmp_path / "other"
    shutil.copytree(random_model, other)
    modules = json.loads((other / "modules.json").read_text())
    modules.append({"idx": len(modules), "name": "custom", "path": "custom", "type": "my_package.Projection"})
    (other / "modules.json").write_text(json.dumps(modules))
    assert declared_dimension(str(other)) is None

    # a plain Hugging Face folder (no modules.json): sentence-transformers mean-pools its hidden states
    plain = tmp_path / "plain"
    shutil.copytree(random_model, plain)
    (plain / "modules.json").unlink()
    assert declared_dimension(str(plain)) == _loaded_dimension(str(plain)) == 384

    # no Pooling module: nothing states the size
    bare = tmp_path / "bare"
    shutil.copytree(random_model, bare)
    kept = [m for m in json.loads((bare / "modules.json").read_text()) if not m["type"].endswith("Pooling")]
    (bare / "modules.json").write_text(json.dumps(kept))
    assert declared_dimension(str(bare)) is None


def test_a_driver_without_the_model_asks_no_task_when_the_folder_states_it(random_model, tmp_path, monkeypatch):
    from vectune.embed import apart
    from vectune.embed.encoder import Encoder, EncoderConfig

    def no_task(*args, **kwargs):
        raise AssertionError("a Ray task was started to learn the dimension")

    monkeypatch.setattr(apart, "here", lambda encoder=None: False)  # as in a driver without the model
    monkeypatch.setattr(apart, "_task", no_task)
    encoder = Encoder(EncoderConfig(model_path=random_model, fingerprint="test"))
    assert apart.dimension(encoder) == 384
    assert not encoder.loaded

    unknown = tmp_path / "unknown"
    shutil.copytree(random_model, unknown)
    modules = json.loads((unknown / "modules.json").read_text())
    (unknown / "modules.json").write_text(json.dumps([*modules, {"path": "x", "type": "my_package.Projection"}]))
    with pytest.raises(AssertionError, match="Ray task"):
        apart.dimension(Encoder(EncoderConfig(model_path=str(unknown), fingerprint="test")))
