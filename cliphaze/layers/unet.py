"""U-Net parts around the TrambaDA stages (spec 2.2, DehazeFormer layout): stem, patch-merge down,
pixel-shuffle up, SKFusion skips and the soft-reconstruction head. Channels-first (B, C, H, W).
"""

from __future__ import annotations

import torch
from torch import nn

SCALE_FACTOR = 2  # every down/up step halves/doubles the resolution
NUM_FUSED = 2  # SKFusion blends the up-sampled path and the skip


class ConvStem(nn.Module):
    """``Conv(k x k, reflect)``: image (B, in, H, W) -> features (B, out, H, W); also the output head."""

    def __init__(self, in_chans: int, out_chans: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel, padding=kernel // 2, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PatchMerge(nn.Module):
    """Down-sampling ``Conv(2 x 2, stride 2)``: (B, in, H, W) -> (B, out, H/2, W/2)."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, SCALE_FACTOR, stride=SCALE_FACTOR)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PixelShuffleUp(nn.Module):
    """Up-sampling ``Conv1x1(in -> 4 out)`` + ``PixelShuffle(2)``: (B, in, H, W) -> (B, out, 2H, 2W)."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans * SCALE_FACTOR**2, 1)
        self.shuffle = nn.PixelShuffle(SCALE_FACTOR)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class SKFusion(nn.Module):
    """Selective-kernel fusion of two maps (DehazeFormer): GAP of the sum -> PW -> ReLU -> PW(2C) ->
    softmax across the two inputs -> weighted sum.

    Args:
        dim: channels C of both inputs.
        reduction: hidden = max(C // reduction, min_hidden).
        min_hidden: lower bound of the hidden width.
    """

    def __init__(self, dim: int, *, reduction: int, min_hidden: int) -> None:
        super().__init__()
        hidden = max(dim // reduction, min_hidden)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, dim * NUM_FUSED, 1, bias=False),
        )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b (B, C, H, W) -> (B, C, H, W)."""
        feats = torch.stack([a, b], dim=1)  # (B, 2, C, H, W)
        attn = self.mlp((a + b).mean(dim=(2, 3), keepdim=True))  # (B, 2C, 1, 1)
        attn = attn.view(a.shape[0], NUM_FUSED, a.shape[1], 1, 1).softmax(dim=1)
        return (feats * attn).sum(dim=1)


class SkipFuse(nn.Module):
    """``Fuse(u, s) = SKFusion(u, PW(s)) + u`` (spec 2.2 skip connections)."""

    def __init__(self, skip_chans: int, dim: int, *, reduction: int, min_hidden: int) -> None:
        super().__init__()
        self.skip = nn.Conv2d(skip_chans, dim, 1)
        self.fusion = SKFusion(dim, reduction=reduction, min_hidden=min_hidden)

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """up (B, C, H, W), skip (B, C_skip, H, W) -> (B, C, H, W)."""
        return self.fusion(up, self.skip(skip)) + up
