"""Base/tuned weight interpolation (WiSE-FT): the arithmetic, tensor by tensor."""

from __future__ import annotations

import torch

from vectune.train.validation import interpolate


def test_interpolation_mixes_float_tensors_and_keeps_integer_buffers():
    base = {"w": torch.zeros(3), "b": torch.full((2,), 4.0), "ids": torch.arange(3)}
    tuned = {"w": torch.ones(3), "b": torch.zeros(2), "ids": torch.arange(3) + 7}
    mixed = interpolate(base, tuned, 0.25)
    assert torch.allclose(mixed["w"], torch.full((3,), 0.25)) and torch.allclose(mixed["b"], torch.full((2,), 3.0))
    assert torch.equal(mixed["ids"], tuned["ids"])
    assert torch.equal(interpolate(base, tuned, 0.0)["w"], base["w"])
    assert torch.equal(interpolate(base, tuned, 1.0)["w"], tuned["w"])
