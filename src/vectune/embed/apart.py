"""Model work a driver hands to a Ray task when it holds no model of its own.

A large re-index or sync encodes in actors; its driver still needs the output dimension
(to create the collection), a few fresh embeddings (to verify the stored vectors) and, in a
sync, the vectors of the few changed documents when they fit in one batch.
Loading the model for those would import torch and sentence-transformers into the driver:
hundreds of MiB it keeps to the end of the process, whatever the corpus size. So a driver
that has not imported sentence-transformers asks a Ray task instead; one that has (a small
corpus encoded in the driver, the whole loop's driver) does the work itself.
"""

from __future__ import annotations

import sys

import numpy as np

from vectune.embed.dataset import encode_texts
from vectune.embed.encoder import Encoder, EncoderConfig
from vectune.embed.models import declared_dimension

__all__ = ["dimension", "encode", "fresh_vectors", "here"]


def here(encoder: Encoder | None = None) -> bool:
    """Whether this process does model work itself: it holds the model already, has imported
    sentence-transformers (loading the model costs little more), or Ray is not up."""
    import ray

    held = encoder is not None and encoder.loaded
    return held or "sentence_transformers" in sys.modules or not ray.is_initialized()


def _dimension(cfg: EncoderConfig) -> int:
    return Encoder(cfg).dimension


def _encode(cfg: EncoderConfig, texts: list[str]) -> np.ndarray:
    return encode_texts(texts, cfg)


def _remembered(cfg: EncoderConfig, texts: list[str]) -> tuple[np.ndarray, dict]:
    encoder = Encoder(cfg, remember=True)
    return encoder.encode(texts), encoder.computed


def _task(fn, num_gpus: float):
    import ray

    # no CPU reserved: a few texts at most, and the stage's own actors may still hold the CPUs
    return ray.remote(fn).options(num_cpus=0, num_gpus=num_gpus or 0, max_retries=1)


def dimension(encoder: Encoder, num_gpus: float = 0) -> int:
    """The model's output dimension: from `encoder` in this process when `here`, else from the
    model folder's configs when they state it (`declared_dimension`), else a Ray task's load."""
    if here(encoder):
        return encoder.dimension
    declared = declared_dimension(encoder.config.model_path)
    if declared is not None:
        return declared
    import ray

    return int(ray.get(_task(_dimension, num_gpus).remote(encoder.config)))


def fresh_vectors(cfg: EncoderConfig, texts: list[str], encoder: Encoder | None = None,
                  num_gpus: float = 0) -> np.ndarray:
    """Fresh vectors of `texts` under `cfg` (uncached): by `encoder` (or a new one) in this
    process when `here`, else a Ray task's."""
    if here(encoder):
        return encode_texts(texts, cfg, encoder=encoder if encoder is not None else Encoder(cfg))
    import ray

    return np.asarray(ray.get(_task(_encode, num_gpus).remote(cfg, texts)), dtype=np.float32)


def encode(encoder: Encoder, texts: list[str], num_gpus: float = 0, progress=None) -> np.ndarray:
    """Vectors of `texts` under `encoder`'s config, its embedding cache included: by `encoder` in
    this process when `here`, else by a Ray task, whose new cache entries land in the same cache
    folder (compacted by the caller, as after actors) and whose freshly computed vectors
    `encoder` then remembers (with `remember`) as if it had computed them, so a verification
    that follows does not run the model on them again. `progress` is ticked per text."""
    from vectune.progress import tick

    if here(encoder):
        encoder.progress, before = progress, encoder.progress
        try:
            return encoder.encode(texts)
        finally:
            encoder.progress = before
    import ray

    vectors, computed = ray.get(_task(_remembered, num_gpus).remote(encoder.config, texts))
    if encoder.computed is not None:
        encoder.computed.update(computed)
    tick(progress, len(texts))
    return np.asarray(vectors, dtype=np.float32)
