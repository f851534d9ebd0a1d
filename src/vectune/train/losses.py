"""Contrastive losses by registered name: the spec says `loss: {type: mnrl}`, never a Python path."""

from __future__ import annotations

from typing import Callable

from vectune.spec.train import CachedMNRLoss, GISTLoss, MNRLoss, TripletLoss

_LOSSES: dict[str, Callable] = {}


def register_loss(name: str):
    """Add a loss factory `(spec_section, model, world_size, guide, precision) -> torch.nn.Module`
    to the registry.

    `guide` is the base model's path, for losses that consult it (GIST); `precision` the
    training precision, for a guide that runs outside the trainer's autocast.
    """

    def deco(fn):
        _LOSSES[name] = fn
        return fn

    return deco


def build_loss(section, model, world_size: int, guide: str | None = None, precision: str = "fp32"):
    try:
        factory = _LOSSES[section.type]
    except KeyError:  # the spec's Literal types make this unreachable from YAML
        raise ValueError(f"unknown loss {section.type!r}; registered: {sorted(_LOSSES)}") from None
    return factory(section, model, world_size, guide, precision)


def registered() -> list[str]:
    return sorted(_LOSSES)


@register_loss("mnrl")
def _mnrl(section: MNRLoss, model, world_size: int, guide=None, precision="fp32"):
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    # gathering shares every worker's in-batch negatives: with N workers each query
    # sees N x batch negatives, the same objective as one big batch on one device
    return MultipleNegativesRankingLoss(
        model, scale=section.scale, gather_across_devices=section.gather_across_workers and world_size > 1
    )


@register_loss("cached_mnrl")
def _cached_mnrl(section: CachedMNRLoss, model, world_size: int, guide=None, precision="fp32"):
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss

    return CachedMultipleNegativesRankingLoss(
        model, scale=section.scale, mini_batch_size=section.mini_batch_size,
        gather_across_devices=section.gather_across_workers and world_size > 1, show_progress_bar=False,
    )


@register_loss("triplet")
def _triplet(section: TripletLoss, model, world_size: int, guide=None, precision="fp32"):
    from sentence_transformers.losses import TripletDistanceMetric, TripletLoss as _Triplet

    return _Triplet(model, distance_metric=TripletDistanceMetric.COSINE, triplet_margin=section.margin)


@register_loss("gist")
def _gist(section: GISTLoss, model, world_size: int, guide=None, precision="fp32"):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import GISTEmbedLoss

    from vectune.embed.encoder import autocast

    if guide is None:
        raise ValueError("the gist loss needs the base model as its guide")
    guide_model = SentenceTransformer(guide, device=str(model.device))
    guide_model.max_seq_length = model.max_seq_length
    guide_model.eval()
    for param in guide_model.parameters():  # the guide only scores; it never trains
        param.requires_grad_(False)
    # the trainer's autocast wraps the trained model only: the guide's forward gets its own
    forward = guide_model.forward

    def guided(*args, **kwargs):
        with autocast(precision, model.device.type):
            return forward(*args, **kwargs)

    guide_model.forward = guided
    return GISTEmbedLoss(
        model, guide_model, temperature=section.temperature, margin_strategy=section.margin_strategy,
        margin=section.margin, gather_across_devices=section.gather_across_workers and world_size > 1,
    )


def columns_for(section, negatives: int) -> int:
    """How many hard-negative columns a loss consumes (triplet takes exactly one)."""
    return 1 if section.type == "triplet" else negatives
