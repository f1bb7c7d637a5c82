"""TrambaDA block and stage (spec 2.3): one shared LayerNorm, window attention and SS2D in parallel,
CLIP-instructed aggregation, residual, then a pre-norm FFN with its own residual. Channels-last.
"""

from __future__ import annotations

import torch
from torch import nn

from cliphaze.config import ClipHazeConfig, StageConfig
from cliphaze.layers.cam import ClipAggregation
from cliphaze.layers.ss2d import SS2D
from cliphaze.layers.window_attention import WindowAttention


class TrambaDA(nn.Module):
    """One Transformer-Mamba dual-aggregation block.

    Args:
        stage: the stage's width, FFN ratio and whether SS2D is kept.
        config: the network config (attention, SSM, guidance and ablation switches).
        shift: shift this block's attention windows.
    """

    def __init__(self, stage: StageConfig, config: ClipHazeConfig, *, shift: bool = False) -> None:
        super().__init__()
        dim, path = stage.dim, config.guidance.path
        self.norm1 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.attn = WindowAttention(dim, config.attention, shift=shift) if path in ("dual", "attn") else None
        self.ssm: nn.Module | None = None
        if path in ("dual", "ssm") and stage.use_ssm:
            self.ssm = SS2D(dim, config.ssm)
        if self.attn is not None and self.ssm is not None:
            self.aggregate: nn.Module = ClipAggregation(
                dim, config.guidance, eps=config.norm_eps, impl=config.attention.impl
            )
        else:  # a single path: output projection only (no blend, no guidance)
            self.aggregate = nn.Linear(dim, dim)
        hidden = int(dim * stage.mlp_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))

    def forward(
        self, x: torch.Tensor, density: torch.Tensor | None = None, tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, H, W, C); density (B, H, W, 1) in [0, 1] or None; tokens (B, T, S) or None -> (B, H, W, C)."""
        z = self.norm1(x)
        if self.attn is not None and self.ssm is not None:
            f = self.aggregate(self.attn(z), self.ssm(z), density, tokens)
        elif self.attn is not None:
            f = self.aggregate(self.attn(z))
        else:
            f = self.aggregate(self.ssm(z))  # type: ignore[misc]
        x = x + f
        return x + self.mlp(self.norm2(x))


class TrambaStage(nn.Module):
    """A run of TrambaDA blocks at one resolution; odd blocks shift their windows when enabled."""

    def __init__(self, stage: StageConfig, config: ClipHazeConfig) -> None:
        super().__init__()
        shift = config.attention.shift
        self.blocks = nn.ModuleList(TrambaDA(stage, config, shift=shift and i % 2 == 1) for i in range(stage.depth))

    def forward(
        self, x: torch.Tensor, density: torch.Tensor | None = None, tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, H, W, C) -> (B, H, W, C); guidance as in :meth:`TrambaDA.forward`."""
        for block in self.blocks:
            x = block(x, density, tokens)
        return x
