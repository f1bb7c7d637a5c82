"""Training losses, with BasicSR's ``loss_weight`` / ``reduction`` conventions.

* :class:`ReconstructionLoss`: L1 on the network's [-1, 1] output (spec 3.2, DehazeFormer), plus an
  optional L1 term on FFT amplitudes (a frequency loss many dehazers add for real sets), off by default.
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
