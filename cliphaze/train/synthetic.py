"""Synthetic haze from the atmospheric scattering model: ``I = J * t + A * (1 - t)``, ``t = exp(-beta * d)``.

Two kinds (spec 2.7, Koschmieder's model as used by RESIDE):

* ``homogeneous``: one scattering coefficient ``beta`` per image over a depth proxy ``d`` in [0, 1]
  built from a tilted vertical gradient (far at the top), the smoothed brightness of the scene (sky and
  bright regions read as far) and a random smooth plane.
* ``nonhomogeneous``: ``beta`` varies over the image as a smooth random field (sum of low-frequency
  noise octaves), NH-HAZE style patches of dense and thin haze, multiplied with a softened depth proxy.

Every sample returns the transmission ``t`` and airlight ``A`` it used, so the clear image is exactly
recoverable: ``J = (I - A * (1 - t)) / t``. Values stay in float [0, 1]; nothing is clipped or
quantised here (``t`` is bounded below by ``t_min`` before it is used, not after).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

HazeKind = Literal["homogeneous", "nonhomogeneous"]
HAZE_KINDS: tuple[HazeKind, ...] = ("homogeneous", "nonhomogeneous")

# Rec. 601 luma weights, for the brightness part of the depth proxy.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


class SyntheticHazeError(ValueError):
    """Invalid synthetic-haze options or inputs."""


@dataclass(frozen=True)
class HazeConfig:
    """Ranges the synthetic haze is drawn from (uniform within each range)."""

    kinds: tuple[HazeKind, ...] = HAZE_KINDS  # kinds drawn with equal probability
    beta_range: tuple[float, float] = (0.6, 2.2)  # scattering coefficient x unit depth, homogeneous haze
    nh_beta_range: tuple[float, float] = (0.3, 3.0)  # local beta range inside a non-homogeneous field
    airlight_range: tuple[float, float] = (0.7, 1.0)  # grey level of the airlight A, in [0, 1]
    airlight_tint: float = 0.08  # max per-channel deviation of A from grey (colour cast), in [0, 1]
    t_min: float = 0.08  # lower bound of the transmission (keeps J recoverable and the task sane)
    gradient_weight: tuple[float, float] = (0.3, 0.8)  # weight of the vertical gradient in the depth proxy
    brightness_weight: tuple[float, float] = (0.0, 0.5)  # weight of smoothed luminance in the depth proxy
    max_tilt: float = 0.3  # max horizontal slope of the far-to-near gradient (fraction of height per width)
    smooth_fraction: float = 0.08  # blur sigma of the brightness proxy, as a fraction of the short side
    noise_cells: tuple[int, int] = (2, 6)  # coarsest noise grid (cells on the short side) of the NH field
    noise_octaves: int = 3  # octaves of the NH field; each doubles the frequency and halves the amplitude
    nh_depth_mix: float = 0.5  # how much the depth proxy modulates NH haze (0 = field only, 1 = field x depth)

    def __post_init__(self) -> None:
        for kind in self.kinds:
            if kind not in HAZE_KINDS:
                raise SyntheticHazeError(f"unknown haze kind {kind!r}; choose from {', '.join(HAZE_KINDS)}")
        if not self.kinds:
            raise SyntheticHazeError("at least one haze kind is needed")
        for name in ("beta_range", "nh_beta_range", "airlight_range", "gradient_weight", "brightness_weight"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi:
                raise SyntheticHazeError(f"{name} must satisfy 0 <= low <= high, got {(lo, hi)}")
        if not 0.0 < self.t_min < 1.0:
            raise SyntheticHazeError(f"t_min must be in (0, 1), got {self.t_min}")
        if self.airlight_range[1] > 1.0:
            raise SyntheticHazeError("airlight_range must stay within [0, 1]")


@dataclass(frozen=True)
class HazeSample:
    """One synthetic hazy/clear pair, all float in [0, 1].

    Attributes:
        hazy: (3, H, W) ``I = J t + A (1 - t)``.
        clear: (3, H, W) the haze-free input ``J``.
        transmission: (1, H, W) ``t`` in [t_min, 1].
        airlight: (3,) ``A``.
        kind: which haze model produced it.
    """

    hazy: torch.Tensor
    clear: torch.Tensor
    transmission: torch.Tensor
    airlight: torch.Tensor
    kind: HazeKind


def apply_scattering(clear: torch.Tensor, transmission: torch.Tensor, airlight: torch.Tensor) -> torch.Tensor:
    """The scattering model ``I = J t + A (1 - t)``.

    Args:
        clear: (..., 3, H, W) ``J`` in [0, 1].
        transmission: (..., 1, H, W) ``t`` in (0, 1].
        airlight: (..., 3) ``A`` in [0, 1].

    Returns:
        (..., 3, H, W) hazy image in [0, 1].
    """
    a = airlight[..., :, None, None]
    return clear * transmission + a * (1.0 - transmission)


def recover_clear(hazy: torch.Tensor, transmission: torch.Tensor, airlight: torch.Tensor) -> torch.Tensor:
    """Invert the scattering model: ``J = (I - A (1 - t)) / t``. Shapes as in :func:`apply_scattering`."""
    a = airlight[..., :, None, None]
    return (hazy - a * (1.0 - transmission)) / transmission


def _uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def _gaussian_blur(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding. x: (1, 1, H, W)."""
    radius = max(1, int(math.ceil(3.0 * sigma_px)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if radius < 1:
        return x
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma_px) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(x, kernel.view(1, 1, -1, 1))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    if float(hi - lo) < 1e-8:
        return torch.zeros_like(x)
    return (x - lo) / (hi - lo)


def smooth_noise(height: int, width: int, generator: torch.Generator, *, cells: int, octaves: int) -> torch.Tensor:
    """Low-frequency random field in [0, 1]: octaves of bicubically upsampled Gaussian noise.

    Args:
        height, width: output size in px.
        cells: grid cells of the coarsest octave along the short side.
        octaves: number of octaves; octave k has ``cells * 2**k`` cells and amplitude ``2**-k``.

    Returns:
        (1, 1, H, W) field normalised to [0, 1].
    """
    short = min(height, width)
    field = torch.zeros(1, 1, height, width)
    for k in range(octaves):
        n = cells * 2**k
        gh = max(2, round(n * height / short)) + 1
        gw = max(2, round(n * width / short)) + 1
        grid = torch.randn(1, 1, gh, gw, generator=generator)
        field += F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=True) * 0.5**k
    return _normalise(field)


def depth_proxy(clear: torch.Tensor, generator: torch.Generator, config: HazeConfig) -> torch.Tensor:
    """A plausible relative depth in [0, 1] (1 = far) without a depth sensor.

    Mix of a tilted vertical gradient (the top of a photo is usually farther), the smoothed luminance
    (sky and bright distant regions) and a random smooth plane, normalised to [0, 1].

    Args:
        clear: (3, H, W) in [0, 1].

    Returns:
        (1, 1, H, W) depth proxy.
    """
    _, h, w = clear.shape
    ys = torch.linspace(1.0, 0.0, h).view(h, 1)
    xs = torch.linspace(-0.5, 0.5, w).view(1, w)
    tilt = _uniform(generator, -config.max_tilt, config.max_tilt)
    gradient = (ys + tilt * xs).clamp(0.0, 1.0)

    luma = sum(wt * clear[c] for c, wt in enumerate(LUMA_WEIGHTS)).view(1, 1, h, w)
    brightness = _gaussian_blur(luma, max(1.0, config.smooth_fraction * min(h, w)))

    ax, ay = (_uniform(generator, -1.0, 1.0) for _ in range(2))
    plane = _normalise(ax * xs + ay * ys.view(h, 1) + torch.zeros(h, w))

    g = _uniform(generator, *config.gradient_weight)
    b = _uniform(generator, *config.brightness_weight)
    p = max(0.0, 1.0 - g - b) * 0.5
    depth = g * gradient.view(1, 1, h, w) + b * brightness + p * plane.view(1, 1, h, w)
    return _normalise(depth)


def random_airlight(generator: torch.Generator, config: HazeConfig) -> torch.Tensor:
    """(3,) airlight: a grey level from ``airlight_range`` plus a small per-channel tint, within [0, 1]."""
    grey = _uniform(generator, *config.airlight_range)
    tint = (torch.rand(3, generator=generator) * 2.0 - 1.0) * config.airlight_tint
    return (grey + tint).clamp(0.0, 1.0)


def synthesize_haze(
    clear: torch.Tensor, generator: torch.Generator, config: HazeConfig, *, kind: HazeKind | None = None
) -> HazeSample:
    """Haze one clean image.

    Args:
        clear: (3, H, W) float in [0, 1].
        generator: source of all randomness (seed it for reproducible haze).
        config: ranges.
        kind: force a haze kind; ``None`` draws one of ``config.kinds``.

    Returns:
        The hazy image with the ``t`` and ``A`` that produced it.
    """
    if clear.ndim != 3 or clear.shape[0] != 3:
        raise SyntheticHazeError(f"expected a (3, H, W) image, got {tuple(clear.shape)}")
    if kind is None:
        kind = config.kinds[int(torch.randint(len(config.kinds), (), generator=generator))]
    elif kind not in HAZE_KINDS:
        raise SyntheticHazeError(f"unknown haze kind {kind!r}")
    clear = clear.float()
    _, h, w = clear.shape
    depth = depth_proxy(clear, generator, config)
    if kind == "homogeneous":
        beta = _uniform(generator, *config.beta_range)
        optical = beta * depth
    else:
        cells = int(torch.randint(config.noise_cells[0], config.noise_cells[1] + 1, (), generator=generator))
        field = smooth_noise(h, w, generator, cells=cells, octaves=config.noise_octaves)
        lo, hi = config.nh_beta_range
        beta_map = lo + (hi - lo) * field
        mix = config.nh_depth_mix
        optical = beta_map * ((1.0 - mix) + mix * depth)
    transmission = torch.exp(-optical).clamp(min=config.t_min, max=1.0).view(1, h, w)
    airlight = random_airlight(generator, config)
    hazy = apply_scattering(clear, transmission, airlight)
    return HazeSample(hazy=hazy, clear=clear, transmission=transmission, airlight=airlight, kind=kind)


def drifting_haze(
    clear: torch.Tensor,
    generator: torch.Generator,
    config: HazeConfig,
    *,
    drift_px_per_frame: tuple[float, float] = (1.5, 0.5),
    cells: int = 3,
) -> HazeSample:
    """Non-homogeneous haze that drifts over a clip, for measuring flicker (no frame-to-frame jumps of its own).

    One smooth ``beta`` field (as the ``nonhomogeneous`` kind) is drawn on a canvas larger than the frame and
    each frame sees it shifted by ``drift_px_per_frame`` more (a wind-blown fog bank); a depth proxy from the
    first frame (a static camera's scene) and one airlight hold for the whole clip.

    Args:
        clear: (T, 3, H, W) clean frames in [0, 1].
        drift_px_per_frame: (dx, dy) of the haze field per frame, in px.
        cells: coarsest noise cells on the short side of the frame.

    Returns:
        ``hazy`` and ``clear`` (T, 3, H, W), ``transmission`` (T, 1, H, W), one ``airlight`` (3,).
    """
    if clear.ndim != 4 or clear.shape[1] != 3 or clear.shape[0] < 1:
        raise SyntheticHazeError(f"expected (T, 3, H, W) frames, got {tuple(clear.shape)}")
    frames, _, h, w = clear.shape
    dx, dy = drift_px_per_frame
    margin_x, margin_y = math.ceil(abs(dx) * frames) + 2, math.ceil(abs(dy) * frames) + 2
    field = smooth_noise(h + margin_y, w + margin_x, generator, cells=cells, octaves=config.noise_octaves)
    lo, hi = config.nh_beta_range
    depth = depth_proxy(clear[0].float(), generator, config)
    mix = config.nh_depth_mix
    transmissions = []
    for t in range(frames):
        # sub-pixel shift by bilinear sampling of the canvas (grid_sample in normalised coordinates)
        ox = (margin_x - 1) / 2 + dx * (t - (frames - 1) / 2)
        oy = (margin_y - 1) / 2 + dy * (t - (frames - 1) / 2)
        ys = (torch.arange(h, dtype=torch.float32) + oy) / (h + margin_y - 1) * 2 - 1
        xs = (torch.arange(w, dtype=torch.float32) + ox) / (w + margin_x - 1) * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
        local = F.grid_sample(field, grid, mode="bilinear", align_corners=True)
        optical = (lo + (hi - lo) * local) * ((1.0 - mix) + mix * depth)
        transmissions.append(torch.exp(-optical).clamp(min=config.t_min, max=1.0).view(1, h, w))
    transmission = torch.stack(transmissions)
    airlight = random_airlight(generator, config)
    hazy = apply_scattering(clear.float(), transmission, airlight)
    return HazeSample(hazy=hazy, clear=clear.float(), transmission=transmission, airlight=airlight,
                      kind="nonhomogeneous")
