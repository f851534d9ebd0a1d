"""Model work a driver hands to a Ray task when it holds no model of its own.

A large re-index or sync encodes in actors; its driver still needs the output dimension
(to create the collection) and a few fresh embeddings (to verify the stored vectors).
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

__all__ = ["dimension", "fresh_vectors", "here"]


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


def _task(fn, num_gpus: float):
    import ray

    # no CPU reserved: a few texts at most, and the stage's own actors may still hold the CPUs
    return ray.remote(fn).options(num_cpus=0, num_gpus=num_gpus or 0, max_retries=1)


def dimension(encoder: Encoder, num_gpus: float = 0) -> int:
    """The model's output dimension: from `encoder` in this process when `here`, else a Ray task."""
    if here(encoder):
        return encoder.dimension
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
