"""Training losses, with BasicSR's ``loss_weight`` / ``reduction`` conventions.

* :class:`ReconstructionLoss`: L1 on the network's [-1, 1] output (spec 3.2, DehazeFormer), plus an
  optional L1 term on FFT amplitudes (a frequency loss many dehazers add for real sets), off by default.
* :func:`scattering_field_loss`: supervision of the soft-reconstruction fields K and Bb by the
  transmission and airlight of synthetic haze (an auxiliary term for small-compute training).
* :func:`density_target` / :func:`density_bce`: the patch-level density objective of spec 2.7: the
  synthetic transmission pooled to the CLIP patch grid, ``1 - mean(t)``, against the predicted map.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

Reduction = Literal["mean", "sum", "none"]


class LossError(ValueError):
    """Invalid loss options or inputs."""


def _reduce(loss: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise LossError(f"unknown reduction {reduction!r}")


class ReconstructionLoss(nn.Module):
    """``loss_weight * (L1(pred, target) + fft_weight * L1(|FFT pred|, |FFT target|))``.

    Inputs are (B, 3, H, W) in the same range (the network's [-1, 1]).
    """

    def __init__(self, *, loss_weight: float = 1.0, fft_weight: float = 0.0, reduction: Reduction = "mean") -> None:
        super().__init__()
        if loss_weight < 0 or fft_weight < 0:
            raise LossError("loss weights must be non-negative")
        self.loss_weight = loss_weight
        self.fft_weight = fft_weight
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise LossError(f"shape mismatch: {tuple(pred.shape)} vs {tuple(target.shape)}")
        pred, target = pred.float(), target.float()
        loss = _reduce(F.l1_loss(pred, target, reduction="none"), self.reduction)
        if self.fft_weight > 0:
            amp_p = torch.fft.rfft2(pred, norm="ortho").abs()
            amp_t = torch.fft.rfft2(target, norm="ortho").abs()
            fft = F.l1_loss(amp_p, amp_t, reduction="none")
            loss = loss + self.fft_weight * (_reduce(fft, self.reduction) if self.reduction != "none" else fft.mean())
        return self.loss_weight * loss


def density_target(transmission: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Haze density per CLIP patch: ``1 - mean(t)`` over each cell of a (h, w) grid.

    Args:
        transmission: (B, 1, H, W) in (0, 1].
        grid: (h, w) patch grid of the density map, e.g. (7, 7).

    Returns:
        (B, 1, h, w) in [0, 1).
    """
    return 1.0 - F.adaptive_avg_pool2d(transmission.float(), grid)


def density_bce(
    density: torch.Tensor, target: torch.Tensor, *, loss_weight: float = 1.0, reduction: Reduction = "mean"
) -> torch.Tensor:
    """BCE between a predicted density map and :func:`density_target`; both (B, 1, h, w) in [0, 1].

    The prediction is clamped away from 0 and 1 so the log stays finite.
    """
    if density.shape != target.shape:
        raise LossError(f"shape mismatch: {tuple(density.shape)} vs {tuple(target.shape)}")
    eps = torch.finfo(torch.float32).eps
    p = density.float().clamp(eps, 1.0 - eps)
    return loss_weight * _reduce(F.binary_cross_entropy(p, target.float(), reduction="none"), reduction)


# K is clamped to at least this in the field loss, so the implied transmission 1 / (1 + K) stays finite.
FIELD_LOSS_MIN_K = -0.5


def scattering_fields(transmission: torch.Tensor, airlight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact soft-reconstruction fields of scattering-model haze, on the network's [-1, 1] scale.

    With ``x = 2I - 1``, ``I = J t + A (1 - t)`` and ``y = K x - Bb + x`` (cliphaze.model.reconstruct),
    ``y = 2J - 1`` exactly when ``K = 1/t - 1`` and ``Bb = K (2A - 1)``.

    Args:
        transmission: (B, 1, H, W) ``t`` in (0, 1].
        airlight: (B, 3) ``A`` in [0, 1].

    Returns:
        K (B, 1, H, W) and Bb (B, 3, H, W).
    """
    k = 1.0 / transmission.float() - 1.0
    return k, k * (2.0 * airlight.float()[:, :, None, None] - 1.0)


def scattering_field_loss(
    k: torch.Tensor, bb: torch.Tensor, transmission: torch.Tensor, airlight: torch.Tensor, *, loss_weight: float = 1.0
) -> torch.Tensor:
    """L1 between the network's fields and the true haze, in bounded terms (mean over pixels).

    ``t_hat = 1 / (1 + K)`` against ``t``, and ``Bb t_hat`` against ``(1 - t)(2A - 1)``, which the exact
    fields of :func:`scattering_fields` satisfy. Both terms stay within [0, 1] where K's raw range
    (0 to 1/t_min - 1) would let the densest haze dominate.

    Args:
        k: (B, 1, H, W), bb: (B, 3, H, W) from ``ClipHazeNet.forward_fields``.
        transmission: (B, 1, H, W); airlight: (B, 3).
    """
    if k.shape[-2:] != transmission.shape[-2:] or bb.shape[0] != airlight.shape[0]:
        raise LossError(f"field shapes {tuple(k.shape)}, {tuple(bb.shape)} do not match the haze "
                        f"{tuple(transmission.shape)}, {tuple(airlight.shape)}")
    t = transmission.float()
    t_hat = 1.0 / (1.0 + k.float().clamp(min=FIELD_LOSS_MIN_K))
    offset = (1.0 - t) * (2.0 * airlight.float()[:, :, None, None] - 1.0)
    return loss_weight * (F.l1_loss(t_hat, t) + F.l1_loss(bb.float() * t_hat, offset))
