"""Embedding, shared by every stage: model resolution, the encoder UDF and its actor plan,
the embedding cache, and the corpus encoder (`vectune.embed.corpus`)."""

from __future__ import annotations

from vectune.embed.actors import ActorPlan, plan_actors
from vectune.embed.cache import EmbeddingCache
from vectune.embed.dataset import compact_cache, embed_dataset, encode_texts
from vectune.embed.encoder import Encoder, EncoderConfig, encoder_config
from vectune.embed.models import load_model, model_fingerprint, resolve_model

__all__ = [
    "ActorPlan", "EmbeddingCache", "Encoder", "EncoderConfig", "compact_cache", "embed_dataset", "encode_texts",
    "encoder_config", "load_model", "model_fingerprint", "plan_actors", "resolve_model",
]
