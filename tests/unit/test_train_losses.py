"""Losses by registered name: each builds on the real model and gives a finite loss on a
tiny batch; GIST's guide is the frozen base model."""

from __future__ import annotations

import pytest
import torch

from vectune.embed import resolve_model
from vectune.spec.train import CachedMNRLoss, GISTLoss, MNRLoss, TripletLoss
from vectune.train.losses import build_loss, columns_for, registered


@pytest.fixture(scope="module")
def model():
    from sentence_transformers import SentenceTransformer

    m = SentenceTransformer(resolve_model("all-MiniLM-L6-v2"), device="cpu")
    m.max_seq_length = 16
    return m


def _features(model, columns):
    return [model.preprocess(c) for c in columns]


@pytest.mark.parametrize("section", [MNRLoss(), CachedMNRLoss(mini_batch_size=2), GISTLoss(), TripletLoss()],
                         ids=lambda s: s.type)
def test_every_registered_loss_trains_on_a_tiny_batch(model, section):
    base = resolve_model("all-MiniLM-L6-v2")
    loss = build_loss(section, model, world_size=1, guide=base, precision="bf16")
    cols = [["aspirin and heart attacks", "vitamin d in winter"],
            ["aspirin lowers the risk of myocardial infarction", "vitamin d levels drop without sunlight"],
            ["the stock market fell", "a football match report"]][: 2 + columns_for(section, 1)]
    value = loss(_features(model, cols), None)
    assert torch.isfinite(value) and value.requires_grad
    assert set(registered()) >= {"mnrl", "cached_mnrl", "gist", "triplet"}


def test_gist_guide_is_frozen_and_not_the_trained_model(model):
    loss = build_loss(GISTLoss(), model, world_size=1, guide=resolve_model("all-MiniLM-L6-v2"))
    assert loss.guide is not model
    assert not any(p.requires_grad for p in loss.guide.parameters())
    assert any(p.requires_grad for p in model.parameters())
