"""``dcp``: He et al.'s dark channel prior with a fast guided filter, real time on a CPU.

The transmission is estimated at reduced resolution (the working height, or ``scale`` x the frame,
whichever is smaller) and brought back to full resolution by the fast guided filter
(``kornia.filters.guided_blur`` with ``subsample``), guided by the full-resolution grey image. The
atmospheric light is the mean colour of the brightest 0.1 % of the dark channel, smoothed over time by
an EMA whose state lives in the instance (one instance per stream).

References: He, Sun, Tang, "Single Image Haze Removal Using Dark Channel Prior" (CVPR 2009);
He, Sun, "Fast Guided Filter" (arXiv 1505.00996).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cliphaze.guidance_types import Guidance

logger = logging.getLogger(__name__)

# ITU-R BT.601 luma weights for the grey guide image.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Largest 8-bit pixel value; DCP works in raw 0..255 units.
PIXEL_MAX = 255.0
# Coarse grid of the density map that encode_guidance reports (matches CLIP's 7x7 patch grid).
DENSITY_GRID = (7, 7)


@dataclass(frozen=True)
class DcpConfig:
    """Parameters of the dark channel prior dehazer (defaults from He et al. where they give one)."""

    patch_px: int = 15  # side of the dark-channel min filter, in full-resolution pixels (He et al.: 15)
    omega: float = 0.95  # fraction of haze removed (1 = all; He et al. keep 5 % for depth perception)
    t0: float = 0.1  # lower bound of the transmission, avoids noise blow-up in dense haze
    top_fraction: float = 0.001  # brightest fraction of the dark channel that defines the airlight
    airlight_ema_weight: float = 0.1  # weight of the newest frame in the airlight EMA (1 = no smoothing)
    airlight_min: float = 0.05  # lower bound of each airlight channel in [0, 1], avoids division blow-up
    work_height_px: int = 180  # the transmission is estimated at no more than this height
    guide_radius_px: int = 40  # guided-filter window radius, in full-resolution pixels
    guide_eps: float = 1e-3  # guided-filter regularisation, in squared [0, 1] grey units

    def __post_init__(self) -> None:
        if self.patch_px < 1 or self.work_height_px < 8 or self.guide_radius_px < 1:
            raise ValueError("patch_px, guide_radius_px must be >= 1 and work_height_px >= 8")
        if not 0.0 < self.omega <= 1.0 or not 0.0 < self.t0 < 1.0:
            raise ValueError("omega must be in (0, 1] and t0 in (0, 1)")
        if not 0.0 < self.top_fraction < 1.0 or not 0.0 < self.airlight_ema_weight <= 1.0:
            raise ValueError("top_fraction must be in (0, 1) and airlight_ema_weight in (0, 1]")


def _odd_at_least_3(value: float) -> int:
    k = max(3, round(value))
    return k if k % 2 == 1 else k + 1


def dark_channel(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Dark channel: min over colour channels, then a ``patch`` x ``patch`` min filter.

    Args:
        images: (N, 3, H, W), any value range.
        patch: odd window side in pixels.

    Returns:
        (N, 1, H, W) in the range of ``images``.
    """
    neg = -images.amin(dim=1, keepdim=True)
    # Separable min filter: a row pass then a column pass (same result, about half the cost).
    neg = F.max_pool2d(neg, kernel_size=(1, patch), stride=1, padding=(0, patch // 2))
    return -F.max_pool2d(neg, kernel_size=(patch, 1), stride=1, padding=(patch // 2, 0))


def estimate_airlight(images: torch.Tensor, dark: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """Per-frame atmospheric light: mean colour of the brightest ``top_fraction`` of the dark channel.

    Args:
        images: (N, 3, H, W), any value range (the result has the same range).
        dark: (N, 1, H, W) dark channel of ``images``.
        top_fraction: fraction of pixels used, e.g. 0.001.

    Returns:
        (N, 3) in the range of ``images``.
    """
    n, c = images.shape[:2]
    flat_dark = dark.reshape(n, -1)
    k = max(1, int(flat_dark.shape[1] * top_fraction))
    idx = flat_dark.topk(k, dim=1).indices  # (N, k)
    picked = images.reshape(n, c, -1).gather(2, idx.unsqueeze(1).expand(n, c, k))
    return picked.mean(dim=2)


class DarkChannelDehazer:
    """Dark channel prior dehazer (see module docstring). Keeps airlight state: one instance per stream."""

    name = "dcp"

    def __init__(self, device: torch.device | str = "cpu", config: DcpConfig | None = None) -> None:
        self.device = torch.device(device)
        self.config = config or DcpConfig()
        self._airlight: torch.Tensor | None = None  # (3,) EMA state in [0, 255]

    @property
    def uses_guidance(self) -> bool:
        return False

    def reset(self) -> None:
        """Forget the smoothed airlight (call on a new stream or a scene cut)."""
        self._airlight = None

    def _subsample(self, height: int, scale: float) -> int:
        factor = max(1, math.ceil(height / self.config.work_height_px))
        if scale < 1.0:
            factor = max(factor, round(1.0 / scale))
        return factor

    def _smooth_airlight(self, per_frame: torch.Tensor) -> torch.Tensor:
        """EMA over the batch in frame order. (N, 3) -> (N, 3); updates the instance state."""
        out = torch.empty_like(per_frame)
        state = self._airlight
        for i in range(per_frame.shape[0]):
            state = per_frame[i] if state is None else torch.lerp(state, per_frame[i], self.config.airlight_ema_weight)
            out[i] = state
        self._airlight = state
        return out

    def _transmission(self, images: torch.Tensor, scale: float, *, smooth: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Refined full-resolution transmission and the airlight used.

        Args:
            images: (N, H, W, 3) float in [0, 255] (channels last: every full-frame pass stays contiguous).
            scale: upper bound of the working resolution relative to the frame.
            smooth: update and use the airlight EMA (False: per-frame airlight, state untouched).

        Returns:
            t: (N, 1, H, W) in [t0, 1]; airlight: (N, 3) in [0, 255].
        """
        cfg = self.config
        height = images.shape[1]
        sub = self._subsample(height, scale)
        planar = images.permute(0, 3, 1, 2)  # (N, 3, H, W) view, channels-last memory
        small = F.avg_pool2d(planar, sub) if sub > 1 else planar
        patch = _odd_at_least_3(cfg.patch_px / sub)
        dark = dark_channel(small, patch)
        airlight = estimate_airlight(small, dark, cfg.top_fraction)
        if smooth:
            airlight = self._smooth_airlight(airlight)
        airlight = airlight.clamp(cfg.airlight_min * PIXEL_MAX, PIXEL_MAX)
        t_small = 1.0 - cfg.omega * dark_channel(small / airlight[:, :, None, None], patch)
        weights = torch.tensor(LUMA_WEIGHTS, device=images.device, dtype=images.dtype)
        grey = (images @ weights).unsqueeze(1)  # (N, 1, H, W) in [0, 255]
        if sub > 1:
            # The fast guided filter subsamples its input again; nearest upsampling makes that a lookup.
            t_full = F.interpolate(t_small, size=images.shape[1:3], mode="nearest")
        else:
            t_full = t_small.contiguous()
        from kornia.filters import guided_blur

        kernel = 2 * cfg.guide_radius_px + 1
        eps = cfg.guide_eps * PIXEL_MAX**2  # eps is in squared guide units
        t = guided_blur(grey, t_full, kernel, eps, subsample=sub, separable=True)
        return t.clamp_(cfg.t0, 1.0), airlight

    @torch.no_grad()
    def encode_guidance(self, frames: torch.Tensor) -> Guidance:
        """Haze density 1 - t on a coarse grid, for logging; does not touch the airlight state.

        Args:
            frames: (N, H, W, 3) uint8 RGB on ``device``.

        Returns:
            Guidance with ``density`` (N, 1, 7, 7) in [0, 1] and no tokens.
        """
        t, _ = self._transmission(frames.float(), 1.0, smooth=False)
        return Guidance(density=F.adaptive_avg_pool2d(1.0 - t, DENSITY_GRID))

    @torch.no_grad()
    def restore(self, frames: torch.Tensor, guidance: Guidance | None, *, scale: float = 1.0) -> torch.Tensor:
        """Dehazed frames J = (I - A) / max(t, t0) + A, computed as I / t + A (1 - 1 / t).

        Args:
            frames: (N, H, W, 3) uint8 RGB on ``device``.
            guidance: ignored (the transmission is per frame by construction).
            scale: the transmission is estimated at no more than ``scale`` x resolution.

        Returns:
            (N, H, W, 3) uint8 RGB on ``device``.
        """
        # DCP is scale-invariant in I/A, so it works on raw 0..255 values: no range mapping pass.
        images = frames.float()
        t, airlight = self._transmission(images, scale, smooth=True)
        inv_t = t.reciprocal_().permute(0, 2, 3, 1)  # (N, H, W, 1)
        restored = (1.0 - inv_t) * airlight[:, None, None, :]
        restored.addcmul_(images, inv_t)
        return restored.clamp_(0.0, PIXEL_MAX).round_().to(torch.uint8)
