"""Losses: the scattering-model fields reconstruct the clear image exactly, and the field loss sees errors."""

from __future__ import annotations

import pytest
import torch

from cliphaze.losses import LossError, scattering_field_loss, scattering_fields
from cliphaze.model import reconstruct
from cliphaze.preprocess import unit_to_model
from cliphaze.train.synthetic import apply_scattering


def _haze(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    clear = torch.rand(2, 3, 8, 10, generator=g)
    t = 0.08 + 0.92 * torch.rand(2, 1, 8, 10, generator=g)
    airlight = 0.6 + 0.4 * torch.rand(2, 3, generator=g)
    return clear, t, airlight, apply_scattering(clear, t, airlight)


def test_exact_fields_reconstruct_the_clear_image_and_have_zero_loss() -> None:
    clear, t, airlight, hazy = _haze()
    k, bb = scattering_fields(t, airlight)
    torch.testing.assert_close(reconstruct(unit_to_model(hazy), k, bb), unit_to_model(clear), atol=1e-5, rtol=0)
    assert float(scattering_field_loss(k, bb, t, airlight)) == pytest.approx(0.0, abs=1e-6)


def test_field_loss_grows_with_the_error_and_has_gradients() -> None:
    _, t, airlight, _ = _haze(1)
    k, bb = scattering_fields(t, airlight)
    small = scattering_field_loss(k * 1.05, bb, t, airlight)
    large = scattering_field_loss(k * 1.5, bb, t, airlight)
    assert 0 < float(small) < float(large)
    k0 = torch.zeros_like(k, requires_grad=True)  # what an identity network (K = Bb = 0) predicts
    loss = scattering_field_loss(k0, torch.zeros_like(bb), t, airlight, loss_weight=2.0)
    loss.backward()
    assert float(loss.detach()) > 0 and k0.grad is not None and float(k0.grad.abs().sum()) > 0


def test_field_loss_rejects_mismatched_shapes() -> None:
    _, t, airlight, _ = _haze()
    k, bb = scattering_fields(t, airlight)
    with pytest.raises(LossError):
        scattering_field_loss(k[..., :4], bb, t, airlight)
