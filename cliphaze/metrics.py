"""Image-quality metrics: full-reference PSNR/SSIM from maintained libraries, and no-reference haze scores.

Full reference (images in [0, 1] float or uint8, compared at full resolution):

* PSNR: ``skimage.metrics.peak_signal_noise_ratio`` over all pixels and the 3 RGB channels.
* SSIM (skimage): ``skimage.metrics.structural_similarity`` on full-resolution RGB (``channel_axis=-1``)
  with the settings of Wang et al. 2004 (Gaussian window, sigma 1.5, population covariance).
* SSIM (DehazeFormer protocol, spec 3.3): ``pytorch_msssim.ssim(data_range=1)`` on RGB after
  ``adaptive_avg_pool2d`` down-sampling by ``r = max(1, round(min(H, W) / 256))``.

No reference (for real hazy video without ground truth), written from the published formulas:

* dark channel mean (He, Sun, Tang, CVPR 2009): per-pixel RGB minimum, then a minimum filter over a
  15x15 patch; haze-free outdoor images have a dark channel near 0, haze raises it.
* RMS contrast: standard deviation of the Rec. 601 luma in [0, 1] (Peli 1990); haze lowers it.
* colourfulness (Hasler and Suesstrunk 2003): ``sqrt(s_rg^2 + s_yb^2) + 0.3 sqrt(m_rg^2 + m_yb^2)`` on
  the 0-255 scale with ``rg = R - G`` and ``yb = (R + G) / 2 - B``; haze washes colours out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# SSIM settings of Wang et al. 2004, used with skimage's structural_similarity.
SSIM_GAUSSIAN_SIGMA = 1.5
# DehazeFormer protocol: images are pooled so the short side is about this many px before SSIM.
DEHAZEFORMER_SSIM_SIDE_PX = 256
# He et al. dark channel patch size in px.
DARK_CHANNEL_PATCH_PX = 15
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
COLOURFULNESS_MEAN_WEIGHT = 0.3


class MetricError(ValueError):
    """Images that cannot be compared (shape or dtype mismatch)."""


def _as_float_hwc(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 or float [0, 1] image (H, W, 3) -> float64 (H, W, 3) in [0, 1]. Tensors may be (3, H, W)."""
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] == 3 and t.shape[-1] != 3:
            t = t.permute(1, 2, 0)
        image = t.numpy()
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if image.dtype.kind != "f":
        raise MetricError(f"expected uint8 or float images, got {image.dtype}")
    return image.astype(np.float64)


def _check_pair(restored: np.ndarray, target: np.ndarray) -> None:
    if restored.shape != target.shape:
        raise MetricError(f"shape mismatch: {restored.shape} vs {target.shape}")
    if restored.ndim != 3 or restored.shape[-1] != 3:
        raise MetricError(f"expected RGB images (H, W, 3), got {restored.shape}")


def psnr(restored: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """PSNR in dB of RGB images (H, W, 3) (or tensors (3, H, W)), uint8 or float in [0, 1].

    Both are mapped to float [0, 1] first, so uint8 and float inputs give the same number for the same
    pixels. Identical images give ``inf``.
    """
    from skimage.metrics import peak_signal_noise_ratio

    r, t = _as_float_hwc(restored), _as_float_hwc(target)
    _check_pair(r, t)
    if np.array_equal(r, t):
        return float("inf")
    return float(peak_signal_noise_ratio(t, r, data_range=1.0))


def ssim(restored: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """skimage SSIM of full-resolution RGB images (H, W, 3), uint8 or float in [0, 1]; in [-1, 1]."""
    from skimage.metrics import structural_similarity

    r, t = _as_float_hwc(restored), _as_float_hwc(target)
    _check_pair(r, t)
    return float(
        structural_similarity(
            t,
            r,
            data_range=1.0,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=SSIM_GAUSSIAN_SIGMA,
            use_sample_covariance=False,
        )
    )


def ssim_dehazeformer(restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM by the DehazeFormer protocol (pooled to a ~256 px short side, then ``pytorch_msssim.ssim``).

    Args:
        restored: (N, 3, H, W) float in [0, 1].
        target: (N, 3, H, W) float in [0, 1].

    Returns:
        (N,) SSIM per image.
    """
    from pytorch_msssim import ssim as ms_ssim

    if restored.shape != target.shape or restored.ndim != 4:
        raise MetricError(f"expected equal (N, 3, H, W) shapes, got {tuple(restored.shape)} vs {tuple(target.shape)}")
    h, w = restored.shape[-2:]
    r = max(1, round(min(h, w) / DEHAZEFORMER_SSIM_SIDE_PX))
    x, y = restored.float(), target.float()
    if r > 1:
        size = (int(h / r), int(w / r))
        x, y = F.adaptive_avg_pool2d(x, size), F.adaptive_avg_pool2d(y, size)
    return ms_ssim(x, y, data_range=1.0, size_average=False)


def ssim_dehazeformer_image(restored: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """:func:`ssim_dehazeformer` for one RGB image (H, W, 3), uint8 or float in [0, 1]."""
    r, t = _as_float_hwc(restored), _as_float_hwc(target)
    _check_pair(r, t)
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float()  # noqa: E731
    return float(ssim_dehazeformer(to_t(r), to_t(t))[0])


@dataclass(frozen=True)
class NoReferenceScores:
    """No-reference haze indicators of one frame (see the module docstring for the formulas)."""

    dark_channel: float  # mean dark channel in [0, 1]; lower = less haze
    contrast: float  # RMS contrast of luma in [0, 1]; higher = less haze
    colourfulness: float  # Hasler-Suesstrunk colourfulness (0-255 scale); higher = less haze


def dark_channel(image: np.ndarray, patch_px: int = DARK_CHANNEL_PATCH_PX) -> np.ndarray:
    """He et al.'s dark channel of an RGB image (H, W, 3) uint8 or float [0, 1] -> float32 (H, W) in [0, 1]."""
    import cv2

    rgb = _as_float_hwc(image).astype(np.float32)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (patch_px, patch_px))
    return cv2.erode(rgb.min(axis=2), kernel, borderType=cv2.BORDER_REPLICATE)


def no_reference_scores(image: np.ndarray) -> NoReferenceScores:
    """Dark-channel mean, RMS contrast and colourfulness of one RGB frame (H, W, 3), uint8 or float [0, 1]."""
    rgb = _as_float_hwc(image)
    luma = sum(w * rgb[..., c] for c, w in enumerate(LUMA_WEIGHTS))
    r, g, b = (rgb[..., c] * 255.0 for c in range(3))
    rg = r - g
    yb = 0.5 * (r + g) - b
    colourfulness = np.hypot(rg.std(), yb.std()) + COLOURFULNESS_MEAN_WEIGHT * np.hypot(rg.mean(), yb.mean())
    return NoReferenceScores(
        dark_channel=float(dark_channel(rgb).mean()),
        contrast=float(luma.std()),
        colourfulness=float(colourfulness),
    )


# Block sizes at which a windowed / downsampling network can leave a grid (window 8 at the full-resolution stage,
# and the 2x downsampling of each U-Net stage).
SEAM_PERIODS_PX = (8, 16, 32)


def grid_seam_ratio(image: np.ndarray | torch.Tensor, period_px: int) -> float:
    """How much stronger the image's edges are across every ``period_px``-th pixel boundary than elsewhere.

    The mean absolute difference between neighbouring pixels (over RGB, both directions), taken per boundary
    phase ``(x + 1) mod period`` (phase 0: between pixel ``k * period - 1`` and ``k * period``, the borders of
    blocks aligned to the image origin), divided by the median of the other phases' means. A seamless image
    scores about 1; a grid of block borders scores more.

    Args:
        image: RGB (H, W, 3) (or a tensor (3, H, W)), uint8 or float in [0, 1]; both sides > 2 * period_px.
    """
    rgb = _as_float_hwc(image)
    if min(rgb.shape[:2]) <= 2 * period_px:
        raise MetricError(f"image {rgb.shape[:2]} too small for a {period_px} px grid")
    phases = []
    for axis in (1, 0):
        grad = np.abs(np.diff(rgb, axis=axis)).mean(axis=(2, 1 - axis))  # per boundary between index i and i + 1
        phase = (np.arange(grad.shape[0]) + 1) % period_px
        phases.append(np.array([grad[phase == p].mean() for p in range(period_px)]))
    means = (phases[0] + phases[1]) / 2.0
    return float(means[0] / max(np.median(means[1:]), 1e-12))


def seam_excess(
    restored: np.ndarray | torch.Tensor, clean: np.ndarray | torch.Tensor, periods_px: tuple[int, ...] = SEAM_PERIODS_PX
) -> dict[int, float]:
    """Grid seams a restoration adds: :func:`grid_seam_ratio` of ``restored`` minus that of the clean photo.

    About 0 for a seamless restoration (the photo's own structure cancels out); +0.1 means edges across the
    ``period``-px block borders are 10 % stronger, relative to the other phases, than in the clean photo.
    Images as in :func:`psnr`. Returns period -> excess.
    """
    r, c = _as_float_hwc(restored), _as_float_hwc(clean)
    _check_pair(r, c)
    return {p: grid_seam_ratio(r, p) - grid_seam_ratio(c, p) for p in periods_px}


def temporal_error(
    restored: Sequence[np.ndarray | torch.Tensor], clean: Sequence[np.ndarray | torch.Tensor]
) -> float:
    """Flicker: the frame-to-frame change of a restored video that the clean video does not have.

    ``mean_t mean |(R_t - R_{t-1}) - (C_t - C_{t-1})|`` over all pixels and RGB channels, in [0, 1] units
    (x 255 for 8-bit levels). 0 when the restoration changes exactly as the clean video does (a constant
    colour error cancels); haze that drifts, or guidance that jumps between frames, adds to it.

    Args:
        restored: T >= 2 frames (H, W, 3), uint8 or float in [0, 1].
        clean: the T clean frames.
    """
    if len(restored) != len(clean) or len(restored) < 2:
        raise MetricError(f"need two equally long videos of >= 2 frames, got {len(restored)} and {len(clean)}")
    r = [_as_float_hwc(f) for f in restored]
    c = [_as_float_hwc(f) for f in clean]
    for a, b in zip(r, c):
        _check_pair(a, b)
    return float(np.mean([np.abs((r[t] - r[t - 1]) - (c[t] - c[t - 1])).mean() for t in range(1, len(r))]))
