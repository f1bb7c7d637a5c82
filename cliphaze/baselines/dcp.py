"""``dcp``: He et al.'s dark channel prior with a fast guided filter, real time on a CPU.

The transmission is estimated at reduced resolution (the working height, or ``scale`` x the frame,
whichever is smaller: the frame is block-averaged to it) and brought back to full resolution by the fast
guided filter: the filter's linear coefficients are solved at the working resolution (box means by
running sums), upsampled bilinearly and applied to the full-resolution grey image. The
atmospheric light is the mean colour of the brightest 0.1 % of the dark channel, smoothed over time by
an EMA whose state lives in the instance (one instance per stream).

Only two passes touch every pixel: the block average and the final restoration. On the CPU both run as
fused numba kernels (``cliphaze.baselines.dcp_cpu``); elsewhere, or without numba, as torch ops.

References: He, Sun, Tang, "Single Image Haze Removal Using Dark Channel Prior" (CVPR 2009);
He, Sun, "Fast Guided Filter" (arXiv 1505.00996).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cliphaze.baselines import dcp_cpu
from cliphaze.guidance_types import Guidance
from cliphaze.preprocess import device_constant

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
    """Dark channel: min over colour channels, then a ``patch`` x ``patch`` min filter (borders: the window
    is cut to the image).

    Args:
        images: (N, 3, H, W), any value range.
        patch: odd window side in pixels.

    Returns:
        (N, 1, H, W) in the range of ``images``.
    """
    return min_filter(images.amin(dim=1, keepdim=True), patch)


def min_filter(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``patch`` x ``patch`` sliding minimum of (..., H, W), separable, as ``patch - 1`` elementwise minima per
    axis over shifted views (faster than ``max_pool2d`` on the CPU for the small windows DCP uses)."""
    radius = patch // 2
    if radius == 0:
        return x
    height, width = x.shape[-2:]
    padded = F.pad(x, (radius, radius, 0, 0), value=float("inf"))
    rows = padded[..., 0:width]
    for shift in range(1, 2 * radius + 1):
        rows = torch.minimum(rows, padded[..., shift : shift + width])
    padded = F.pad(rows, (0, 0, radius, radius), value=float("inf"))
    out = padded[..., 0:height, :]
    for shift in range(1, 2 * radius + 1):
        out = torch.minimum(out, padded[..., shift : shift + height, :])
    return out


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the (2 radius + 1)^2 window of (N, C, H, W), reflect borders (as ``kornia.filters.box_blur``
    with ``"reflect"``), by running sums in float64: O(1) per pixel whatever the radius. Needs radius < H, W.

    Not ``box_blur`` itself: its convolution took ~0.45 ms per call on a 180x320 map here, 5 of DCP's 20 ms per
    720p frame for the six box means of the guided filter."""
    if radius == 0:
        return x
    kernel = 2 * radius + 1
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect").double()
    sums = F.pad(padded.cumsum(-1), (1, 0))
    rows = sums[..., kernel:] - sums[..., :-kernel]
    sums = F.pad(rows.cumsum(-2), (0, 0, 1, 0))
    return ((sums[..., kernel:, :] - sums[..., :-kernel, :]) / kernel**2).to(x.dtype)


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

    def __init__(self, device: torch.device | str = "cpu", config: DcpConfig | None = None, *,
                 use_numba: bool = True) -> None:  # fmt: skip
        self.device = torch.device(device)
        self.config = config or DcpConfig()
        self.use_numba = use_numba  # CPU only: the fused numba passes (False: the torch path, e.g. for parity tests)
        self._airlight: torch.Tensor | None = None  # (3,) EMA state in [0, 255]
        self._stream_airlight: dict[Hashable, torch.Tensor] = {}  # the same per stream id (restore_streams)

    @property
    def uses_guidance(self) -> bool:
        return False

    def reset(self) -> None:
        """Forget the smoothed airlight: the next frame starts afresh.

        Called between independent images (``cliphaze image``, :func:`cliphaze.evaluate.restore_image`). In video
        the engine does not call it at scene cuts (its detector runs only with guidance): the airlight catches up
        through the EMA instead, ``airlight_ema_weight`` of the way per frame.
        """
        self._airlight = None
        self._stream_airlight.clear()

    def _subsample(self, height: int, scale: float) -> int:
        factor = max(1, math.ceil(height / self.config.work_height_px))
        if scale < 1.0:
            factor = max(factor, round(1.0 / scale))
        return factor

    def _smooth_airlight(self, per_frame: torch.Tensor, streams: Sequence[Hashable] | None) -> torch.Tensor:
        """EMA over the batch in frame order, one state per stream id. (N, 3) -> (N, 3); updates the state."""
        out = torch.empty_like(per_frame)
        for i in range(per_frame.shape[0]):
            key = None if streams is None else streams[i]
            state = self._airlight if key is None else self._stream_airlight.get(key)
            state = per_frame[i] if state is None else torch.lerp(state, per_frame[i], self.config.airlight_ema_weight)
            if key is None:
                self._airlight = state
            else:
                self._stream_airlight[key] = state
            out[i] = state
        return out

    def _airlight_of(self, small: torch.Tensor, dark: torch.Tensor, *, smooth: bool,
                  streams: Sequence[Hashable] | None) -> torch.Tensor:  # fmt: skip
        """(N, 3) airlight in [0, 255] of (N, 3, h, w) working images and their dark channel; EMA when ``smooth``."""
        cfg = self.config
        airlight = estimate_airlight(small, dark, cfg.top_fraction)
        if smooth:
            airlight = self._smooth_airlight(airlight, streams)
        return airlight.clamp(cfg.airlight_min * PIXEL_MAX, PIXEL_MAX)

    def _estimate(self, frames: torch.Tensor, scale: float, *, smooth: bool,
                  streams: Sequence[Hashable] | None = None) -> _Estimate:  # fmt: skip
        """Airlight and the guided filter's coefficients of the transmission, at the working resolution.

        Args:
            frames: (N, H, W, 3) uint8 RGB.
            scale: upper bound of the working resolution relative to the frame.
            smooth: update and use the airlight EMA (False: per-frame airlight, state untouched).
            streams: stream id of each frame (one EMA per id); None: one stream.
        """
        cfg = self.config
        sub = self._subsample(frames.shape[1], scale)
        patch = _odd_at_least_3(cfg.patch_px / sub)
        radius = max(1, round(cfg.guide_radius_px / sub))
        eps = cfg.guide_eps * PIXEL_MAX**2  # eps is in squared guide units
        kernels = self._cpu_kernels()
        if kernels is not None:  # the same steps as below, as two numba kernels around the airlight's top-k
            small = dcp_cpu.block_mean(kernels, frames, sub) if sub > 1 else frames.float()  # (N, h, w, 3)
            dark = dcp_cpu.dark_channel(kernels, small, patch)
            airlight = self._airlight_of(small.permute(0, 3, 1, 2), dark, smooth=smooth, streams=streams)
            mean_a, mean_b, grey = dcp_cpu.guided(kernels, small, airlight, omega=cfg.omega, patch=patch,
                                                  luma=LUMA_WEIGHTS, radius=radius, eps=eps)  # fmt: skip
            return _Estimate(mean_a=mean_a, mean_b=mean_b, airlight=airlight, grey=grey)
        planar = frames.permute(0, 3, 1, 2).float()
        small = F.avg_pool2d(planar, sub) if sub > 1 else planar  # (N, 3, h, w) in [0, 255]
        airlight = self._airlight_of(small, dark_channel(small, patch), smooth=smooth, streams=streams)
        t_raw = 1.0 - cfg.omega * dark_channel(small / airlight[:, :, None, None], patch)
        weights = device_constant(LUMA_WEIGHTS, small.device, small.dtype)  # no per-frame upload
        grey = torch.einsum("nchw,c->nhw", small, weights).unsqueeze(1)  # (N, 1, h, w) in [0, 255]
        mean_a, mean_b = guided_filter_coefficients(grey, t_raw, radius, eps)
        return _Estimate(mean_a=mean_a, mean_b=mean_b, airlight=airlight, grey=grey)

    def _cpu_kernels(self) -> dcp_cpu.DcpKernels | None:
        return dcp_cpu.get_kernels() if self.device.type == "cpu" and self.use_numba else None

    @torch.no_grad()
    def encode_guidance(self, frames: torch.Tensor) -> Guidance:
        """Haze density 1 - t on a coarse grid, for logging; does not touch the airlight state.

        Args:
            frames: (N, H, W, 3) uint8 RGB on ``device``.

        Returns:
            Guidance with ``density`` (N, 1, 7, 7) in [0, 1] and no tokens.
        """
        est = self._estimate(frames, 1.0, smooth=False)
        t = torch.addcmul(est.mean_b, est.mean_a, est.grey).clamp_(self.config.t0, 1.0)
        return Guidance(density=F.adaptive_avg_pool2d(1.0 - t, DENSITY_GRID))

    @torch.no_grad()
    def restore(self, frames: torch.Tensor, guidance: Guidance | None, *, scale: float = 1.0) -> torch.Tensor:
        """Dehazed frames J = (I - A) / max(t, t0) + A.

        Args:
            frames: (N, H, W, 3) uint8 RGB on ``device``.
            guidance: ignored (the transmission is per frame by construction).
            scale: the transmission is estimated at no more than ``scale`` x resolution.

        Returns:
            (N, H, W, 3) uint8 RGB on ``device``.
        """
        return self.restore_streams(frames, None, scale=scale)

    @torch.no_grad()
    def restore_streams(self, frames: torch.Tensor, streams: Sequence[Hashable] | None, *,
                        scale: float = 1.0) -> torch.Tensor:  # fmt: skip
        """``restore`` for a batch that mixes streams (cameras): each id keeps its own airlight EMA, so a
        frame gets exactly the pixels it would get with one instance per stream.

        Args:
            frames: (N, H, W, 3) uint8 RGB on ``device``.
            streams: N stream ids, in frame order; None: all frames belong to one stream.
            scale: as in ``restore``.

        Returns:
            (N, H, W, 3) uint8 RGB on ``device``.
        """
        # DCP is scale-invariant in I/A, so it works on raw 0..255 values: no range mapping pass.
        est = self._estimate(frames, scale, smooth=True, streams=streams)
        kernels = self._cpu_kernels()
        if kernels is not None:
            return dcp_cpu.restore(kernels, frames, est.mean_a, est.mean_b, est.airlight, LUMA_WEIGHTS, self.config.t0)
        return apply_transmission(frames, est, self.config.t0)


@dataclass(frozen=True)
class _Estimate:
    """What DCP estimates at the working resolution (h, w) of N frames.

    The full-resolution transmission is ``t = up(mean_a) * grey + up(mean_b)`` (He and Sun's fast guided
    filter), with ``up`` bilinear upsampling and ``grey`` the full-resolution luma in [0, 255].
    """

    mean_a: torch.Tensor  # (N, 1, h, w)
    mean_b: torch.Tensor  # (N, 1, h, w)
    airlight: torch.Tensor  # (N, 3) in [0, 255]
    grey: torch.Tensor  # (N, 1, h, w) luma of the working image, in [0, 255]


def guided_filter_coefficients(
    guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Box-averaged linear coefficients of the guided filter (He, Sun, Tang 2010): ``q = mean_a * guide + mean_b``.

    Args:
        guide: (N, 1, h, w) grey guide.
        source: (N, 1, h, w) the image to filter.
        radius: window radius in pixels (reduced to fit the image).
        eps: regularisation, in squared guide units.

    Returns:
        mean_a, mean_b: (N, 1, h, w) each.
    """
    radius = max(0, min(radius, guide.shape[-2] - 1, guide.shape[-1] - 1))  # reflect padding needs pad < size
    mean_i = box_mean(guide, radius)
    var_i = torch.addcmul(box_mean(guide * guide, radius), mean_i, mean_i, value=-1)
    mean_p = box_mean(source, radius)
    cov_ip = torch.addcmul(box_mean(guide * source, radius), mean_i, mean_p, value=-1)
    a = cov_ip / (var_i + eps)
    b = torch.addcmul(mean_p, a, mean_i, value=-1)
    return box_mean(a, radius), box_mean(b, radius)


def apply_transmission(frames: torch.Tensor, est: _Estimate, t0: float) -> torch.Tensor:
    """Torch path of the full-resolution pass (any device): uint8 (N, H, W, 3) -> dehazed uint8 (N, H, W, 3)."""
    size = frames.shape[1:3]
    images = frames.float()
    weights = device_constant(LUMA_WEIGHTS, images.device, images.dtype)
    grey = images @ weights  # (N, H, W)
    if est.mean_a.shape[-2:] != size:
        mean_a = F.interpolate(est.mean_a, size=size, mode="bilinear", align_corners=False)[:, 0]
        mean_b = F.interpolate(est.mean_b, size=size, mode="bilinear", align_corners=False)[:, 0]
    else:
        mean_a, mean_b = est.mean_a[:, 0], est.mean_b[:, 0]
    inv_t = torch.addcmul(mean_b, mean_a, grey).clamp_(t0, 1.0).reciprocal_().unsqueeze(-1)  # (N, H, W, 1)
    restored = (1.0 - inv_t) * est.airlight[:, None, None, :]
    restored.addcmul_(images, inv_t)
    return restored.clamp_(0.0, PIXEL_MAX).round_().to(torch.uint8)
