"""Embedding: model resolution, the shared encoder UDF, the embedding cache."""

from __future__ import annotations

from vectune.embed.cache import EmbeddingCache
from vectune.embed.encoder import Encoder, EncoderConfig, encoder_config
from vectune.embed.models import load_model, model_fingerprint, resolve_model
from vectune.embed.pipeline import embed_dataset, encode_texts

__all__ = [
    "EmbeddingCache", "Encoder", "EncoderConfig", "embed_dataset", "encode_texts", "encoder_config",
    "load_model", "model_fingerprint", "resolve_model",
]
