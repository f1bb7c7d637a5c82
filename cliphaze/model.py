"""ClipHazeNet: the CLIPHaze U-Net of TrambaDA stages with a soft-reconstruction head (spec 2.1-2.2).

``forward_fields`` returns the reconstruction fields K (B, 1, H, W) and Bb (B, 3, H, W) in the weights'
dtype (float32: the head runs outside autocast); ``forward`` applies them, ``y = K * x - Bb + x``. Inputs
are in [-1, 1] at any H x W: the image is reflect-padded to a multiple of 2**(scales - 1) and the fields
are cropped back.

With ``config.global_airlight`` (our extension, not the paper's) an :class:`AirlightHead` pools the
bottleneck and the image's colour statistics over the whole image and adds ``K * a`` to Bb: for
scattering-model haze the exact offset is ``Bb = K (2A - 1)`` with one airlight A per image, which a
windowed network otherwise has to guess from each receptive field on its own.
"""

from __future__ import annotations

import logging
import math
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from cliphaze.config import ClipHazeConfig
from cliphaze.layers.padding import crop_to, pad_to_multiple
from cliphaze.layers.tramba import TrambaStage
from cliphaze.layers.unet import ConvStem, PatchMerge, PixelShuffleUp, SkipFuse

logger = logging.getLogger(__name__)

NUM_FIELD_CHANNELS = (1, 3)  # K (transmission-like gain) and Bb (offset), split from the head output
# The airlight head's colour statistics (each per channel) and the grid its max / min are taken on.
AIRLIGHT_COLOUR_STATS = ("mean", "coarse max", "coarse min", "haziest colour")
AIRLIGHT_GRID = (16, 16)


class GuidanceError(ValueError):
    """Density map or semantic tokens do not fit the input batch or the network."""


def reconstruct(x: torch.Tensor, k: torch.Tensor, bb: torch.Tensor) -> torch.Tensor:
    """Soft reconstruction ``K * x - Bb + x`` (DehazeFormer), not clamped.

    Args:
        x: (B, 3, H, W) hazy input in [-1, 1].
        k: (B, 1, H, W) gain field.
        bb: (B, 3, H, W) offset field.

    Returns:
        (B, 3, H, W) restoration, nominally in [-1, 1].
    """
    return k * x - bb + x


def _autocast_off(device_type: str) -> AbstractContextManager[object]:
    """Autocast disabled on ``device_type`` (the meta device of the complexity counter has no autocast)."""
    return nullcontext() if device_type == "meta" else torch.autocast(device_type, enabled=False)


class _DensityPyramid:
    """Per-stage density maps, channels-last, resized once per resolution within one forward pass.

    The map covers the unpadded image: at a stage of scale s it is resized (bilinear) to the content
    size ceil(H / s) x ceil(W / s) and replicate-padded to the stage's padded size, so it stays
    aligned with the features.
    """

    def __init__(self, density: torch.Tensor | None, size: tuple[int, int], padded: tuple[int, int]) -> None:
        self.density = density
        self.size = size
        self.padded = padded
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def at(self, height: int, width: int) -> torch.Tensor | None:
        """(B, height, width, 1) density for a stage of that (padded) size, or None without density."""
        if self.density is None:
            return None
        key = (height, width)
        if key not in self._cache:
            scale = self.padded[0] // height
            content = (math.ceil(self.size[0] / scale), math.ceil(self.size[1] / scale))
            m = F.interpolate(self.density, size=content, mode="bilinear", align_corners=False)
            m = F.pad(m, (0, width - content[1], 0, height - content[0]), mode="replicate")
            self._cache[key] = m.permute(0, 2, 3, 1)
        return self._cache[key]


class AirlightHead(nn.Module):
    """Per-image airlight term ``a`` (B, 3) from pooled bottleneck features and colour statistics.

    The U-Net's features are layer-normalised per pixel, so they have lost the absolute brightness that
    the airlight is; the head therefore also sees the image's colour statistics (mean, and the max and min
    over a coarse grid) and the colour of its haziest part (the input weighted by the squared density
    map, where there is one; the mean colour otherwise). The last layer starts at zero, so a trained
    network gains the head without changing its output.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        stats = len(AIRLIGHT_COLOUR_STATS) * 3
        self.mlp = nn.Sequential(nn.Linear(2 * dim + stats, hidden), nn.GELU(), nn.Linear(hidden, 3))
        self.colour = nn.Linear(stats, 3)  # direct path: the airlight is close to a linear map of these
        for layer in (self.mlp[-1], self.colour):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, feat: torch.Tensor, x: torch.Tensor, density: torch.Tensor | None) -> torch.Tensor:
        """feat (B, C, h, w), the input x (B, 3, H, W) in [-1, 1], density (B, 1, h', w') or None -> (B, 3)."""
        coarse = F.adaptive_avg_pool2d(x, AIRLIGHT_GRID)
        mean = x.mean(dim=(2, 3))
        if density is None:
            hazy_colour = mean
        else:
            weight = density.float().square()
            colour = F.adaptive_avg_pool2d(x, density.shape[-2:])
            hazy_colour = (colour * weight).sum(dim=(2, 3)) / weight.sum(dim=(2, 3)).clamp(min=1e-6)
        stats = torch.cat([mean, coarse.amax(dim=(2, 3)), coarse.amin(dim=(2, 3)), hazy_colour.to(x.dtype)], dim=1)
        pooled = torch.cat([feat.mean(dim=(2, 3)), feat.amax(dim=(2, 3)), stats], dim=1)
        return self.mlp(pooled) + self.colour(stats)


class ClipHazeNet(nn.Module):
    """The CLIPHaze dehazing network.

    Args:
        config: variant config (stages, attention, SS2D, guidance and ablation switches).
    """

    def __init__(self, config: ClipHazeConfig) -> None:
        super().__init__()
        self.config = config
        stages = config.stages
        depth = len(stages) // 2  # number of down-sampling steps
        dims = [s.dim for s in stages]
        self.stem = ConvStem(config.in_chans, dims[0], config.stem_kernel)
        self.stages = nn.ModuleList(TrambaStage(s, config) for s in stages)
        self.downs = nn.ModuleList(PatchMerge(dims[i], dims[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(PixelShuffleUp(dims[depth + i], dims[depth + i + 1]) for i in range(depth))
        self.fuses = nn.ModuleList(
            SkipFuse(
                dims[depth - 1 - i],
                dims[depth + i + 1],
                reduction=config.skip_reduction,
                min_hidden=config.skip_min_hidden,
            )
            for i in range(depth)
        )
        self.head = ConvStem(dims[-1], sum(NUM_FIELD_CHANNELS), config.stem_kernel)
        self.airlight = AirlightHead(dims[depth], config.airlight_hidden) if config.global_airlight else None

    def _check_guidance(
        self, x: torch.Tensor, density: torch.Tensor | None, tokens: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Validate shapes, broadcast batch-1 guidance to the input batch and match the input dtype."""
        batch = x.shape[0]
        if density is not None:
            if density.ndim != 4 or density.shape[1] != 1:
                raise GuidanceError(f"density must be (B, 1, h, w), got {tuple(density.shape)}")
            if density.shape[0] not in (1, batch):
                raise GuidanceError(f"density batch {density.shape[0]} does not match input batch {batch}")
            density = density.to(dtype=x.dtype).expand(batch, -1, -1, -1)
        if tokens is not None:
            width = self.config.guidance.semantic_dim
            if tokens.ndim != 3 or tokens.shape[-1] != width:
                raise GuidanceError(f"tokens must be (B, T, {width}), got {tuple(tokens.shape)}")
            if tokens.shape[0] not in (1, batch):
                raise GuidanceError(f"tokens batch {tokens.shape[0]} does not match input batch {batch}")
            tokens = tokens.to(dtype=x.dtype).expand(batch, -1, -1)
        return density, tokens

    def forward_fields(
        self, x: torch.Tensor, density: torch.Tensor | None = None, tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction fields of a hazy batch.

        Args:
            x: (B, 3, H, W) hazy images in [-1, 1], any H, W >= 1.
            density: (B or 1, 1, h, w) haze density in [0, 1] at any coarse size, or None.
            tokens: (B or 1, T, semantic_dim) semantic tokens, or None.

        Returns:
            K (B, 1, H, W) and Bb (B, 3, H, W); ``reconstruct(x, K, Bb)`` is the restoration.
        """
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"input must be (B, {self.config.in_chans}, H, W), got {tuple(x.shape)}")
        density, tokens = self._check_guidance(x, density, tokens)
        size = (x.shape[-2], x.shape[-1])
        xp, _ = pad_to_multiple(x, self.config.pad_multiple)
        pyramid = _DensityPyramid(density, size, (xp.shape[-2], xp.shape[-1]))

        def run_stage(index: int, feat: torch.Tensor) -> torch.Tensor:
            f = feat.permute(0, 2, 3, 1)  # channels-last inside the stage
            f = self.stages[index](f, pyramid.at(f.shape[1], f.shape[2]), tokens)
            return f.permute(0, 3, 1, 2)

        depth = len(self.downs)
        feat = self.stem(xp)
        skips = []
        for i in range(depth):
            feat = run_stage(i, feat)
            skips.append(feat)
            feat = self.downs[i](feat)
        feat = run_stage(depth, feat)
        bottleneck = feat
        for i in range(depth):
            feat = self.fuses[i](self.ups[i](feat), skips[depth - 1 - i])
            feat = run_stage(depth + 1 + i, feat)
        # The reconstruction head (K, Bb and the airlight term) runs in fp32 whatever the autocast: K is large
        # in dense haze, and K * x rounded to bf16's 8 bits shows as banding (issue 15, 3). The head is one
        # small convolution to 4 channels, so fp32 costs little. (It runs in the weights' dtype: fp32 as the
        # dehazer keeps them; float64 in parity tests.)
        dtype = self.head.conv.weight.dtype
        with _autocast_off(x.device.type):
            fields = crop_to(self.head(feat.to(dtype)), size)
            k, bb = torch.split(fields, NUM_FIELD_CHANNELS, dim=1)
            if self.airlight is not None:
                airlight = self.airlight(bottleneck.to(dtype), x.to(dtype), density)
                bb = bb + k * airlight[:, :, None, None]
        return k, bb

    def forward(
        self, x: torch.Tensor, density: torch.Tensor | None = None, tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Restoration ``K * x - Bb + x`` (B, 3, H, W), not clamped; arguments as in :meth:`forward_fields`."""
        k, bb = self.forward_fields(x, density, tokens)
        return reconstruct(x, k, bb)

    reconstruct = staticmethod(reconstruct)
