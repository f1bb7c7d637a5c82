"""``dcp`` on the CPU as fused numba kernels: the two full-resolution passes and the estimate.

Everything DCP estimates (dark channel, airlight, transmission, the guided filter's coefficients)
lives at the working resolution; only two passes touch every pixel of the frame:

* ``block_mean``: uint8 (N, H, W, 3) -> float32 (N, H // s, W // s, 3), the mean of each s x s block
  (``avg_pool2d`` with kernel = stride = s, reading the 8-bit frame directly: no float copy of it).
* ``restore``: uint8 frame + low-resolution guided-filter coefficients -> uint8 dehazed frame, in one
  pass per pixel: bilinear upsampling of the coefficients (PyTorch's ``align_corners=False``
  sampling), the grey guide, ``t = a * grey + b`` clamped to [t0, 1], ``J = (I - A) / t + A``,
  rounding and saturation. The torch path does the same in ~8 full-frame tensor passes.

At the working resolution (NHWC float32, straight from ``block_mean``):

* ``dark``: the dark channel (channel minimum, then the patch x patch minimum with the window cut at the
  borders), exactly the torch path's values (minima are exact), so the airlight's top-k picks the same pixels.
* ``guided``: the transmission estimate ``1 - omega * dark(I / A)``, the grey guide, and the guided filter's
  box-averaged coefficients (box means by sliding sums in float64 with reflected borders) in one kernel per
  frame. The torch path spends about 60 small tensor operations on this (7 ms of a 640x360 frame's 9 ms on
  one core); the kernel about 1 ms.

The kernels are in :mod:`cliphaze.baselines.dcp_kernels`, which imports numba: :func:`get_kernels` imports it
when the kernels are first needed, and they are compiled with ``cache=True`` (the cache in the user's cache
directory, see :mod:`cliphaze.user_cache`).
Without numba (or if it fails to compile) :func:`get_kernels` returns None and ``dcp`` keeps its
torch path, which gives the same frames within one 8-bit level.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from cliphaze.user_cache import import_numba

logger = logging.getLogger(__name__)

WORK_PLANES = 8  # (h, w) float64 scratch planes per frame of the working-resolution kernels
_scratch = threading.local()  # each thread's scratch (see _workspace)


@dataclass(frozen=True)
class DcpKernels:
    """The compiled kernels (see the module docstring for what each computes)."""

    block_mean: Callable[..., None]  # (frames u8 NHWC, sub, out f32 N h w 3)
    restore: Callable[..., None]  # (frames u8 NHWC, mean_a f32 N h w, mean_b, airlight f32 N 3, luma f32 3, t0, out u8)
    dark: Callable[..., None]  # (small f32 N h w 3, patch, work f64 N WORK_PLANES h w, out f32 N h w)
    # (small, airlight f32 N 3, omega, patch, luma f32 3, radius, eps, work, out mean_a f32 N h w, out mean_b,
    # out grey)
    guided: Callable[..., None]


def _build() -> DcpKernels:
    from cliphaze.baselines import dcp_kernels  # imports numba: only here, after import_numba

    return DcpKernels(block_mean=dcp_kernels.block_mean, restore=dcp_kernels.restore, dark=dcp_kernels.dark,
                      guided=dcp_kernels.guided)  # fmt: skip


@functools.lru_cache(maxsize=1)
def get_kernels() -> DcpKernels | None:
    """The compiled kernels, built once per process; None (logged once) when numba is unavailable."""
    try:
        import_numba()
        from numba.core.errors import NumbaError
    except ImportError as exc:
        logger.warning("dcp: numba does not import (%s); using the slower torch path", exc)
        return None
    try:
        kernels = _build()
        # Compile (or load from the cache) now, on a tiny frame, so a failure shows here and not mid-stream.
        tiny = np.zeros((1, 2, 2, 3), np.uint8)
        kernels.block_mean(tiny, 2, np.empty((1, 1, 1, 3), np.float32))
        coef = np.zeros((1, 1, 1), np.float32)
        kernels.restore(tiny, coef, coef, np.zeros((1, 3), np.float32), np.ones(3, np.float32), 0.1,
                        np.empty_like(tiny))  # fmt: skip
        small = np.ones((1, 4, 4, 3), np.float32)
        field = np.empty((1, 4, 4), np.float32)
        work = np.empty((1, WORK_PLANES, 4, 4), np.float64)
        kernels.dark(small, 3, work, field)
        kernels.guided(small, np.ones((1, 3), np.float32), 0.95, 3, np.ones(3, np.float32), 1, 1.0, work, field,
                       np.empty_like(field), np.empty_like(field))  # fmt: skip
    except NumbaError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        logger.warning("dcp: numba could not compile its kernels (%s); using the slower torch path", first_line)
        return None
    return kernels


def block_mean(kernels: DcpKernels, frames: torch.Tensor, sub: int) -> torch.Tensor:
    """Mean of each ``sub`` x ``sub`` block: uint8 (N, H, W, 3) CPU -> float32 (N, H // sub, W // sub, 3)."""
    n, height, width, _ = frames.shape
    out = np.empty((n, height // sub, width // sub, 3), np.float32)
    kernels.block_mean(frames.contiguous().numpy(), sub, out)
    return torch.from_numpy(out)


def restore(kernels: DcpKernels, frames: torch.Tensor, mean_a: torch.Tensor, mean_b: torch.Tensor,
            airlight: torch.Tensor, luma: tuple[float, float, float], t0: float) -> torch.Tensor:  # fmt: skip
    """Dehazed uint8 (N, H, W, 3) from uint8 frames and (N, 1, h, w) coefficients, airlight (N, 3) in 0..255."""
    frames_np = frames.contiguous().numpy()
    out = np.empty_like(frames_np)
    kernels.restore(frames_np, mean_a[:, 0].float().contiguous().numpy(), mean_b[:, 0].float().contiguous().numpy(),
                    airlight.float().contiguous().numpy(), np.asarray(luma, np.float32), float(t0), out)  # fmt: skip
    return torch.from_numpy(out)


def _workspace(n: int, height: int, width: int) -> np.ndarray:
    """This thread's (n, WORK_PLANES, h, w) float64 scratch of the working-resolution kernels, kept between
    calls: fresh multi-megabyte buffers on every frame cost more in page faults than the kernels' arithmetic
    (1.2 of 1.4 ms per 320x180 frame here). Per thread: several cameras' threads may estimate at once."""
    work = getattr(_scratch, "work", None)
    if work is None or work.shape != (n, WORK_PLANES, height, width):
        work = _scratch.work = np.empty((n, WORK_PLANES, height, width), np.float64)
    return work


def dark_channel(kernels: DcpKernels, small: torch.Tensor, patch: int) -> torch.Tensor:
    """Dark channel of float32 (N, h, w, 3) CPU images: (N, 1, h, w), the same values as ``dcp.dark_channel``."""
    small_np = small.contiguous().numpy()
    n, h, w, _ = small_np.shape
    out = np.empty((n, h, w), np.float32)
    kernels.dark(small_np, patch, _workspace(n, h, w), out)
    return torch.from_numpy(out)[:, None]


def guided(kernels: DcpKernels, small: torch.Tensor, airlight: torch.Tensor, *, omega: float, patch: int,
           luma: tuple[float, float, float], radius: int, eps: float) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """The guided filter's coefficients of the transmission ``1 - omega * dark(I / A)`` and the grey guide.

    Args:
        small: float32 (N, h, w, 3) CPU images in [0, 255] (the working resolution).
        airlight: (N, 3) in [0, 255], each channel > 0.
        omega, patch: as ``DcpConfig`` (``patch`` odd, at the working resolution).
        luma: weights of the grey guide.
        radius: box radius at the working resolution (cut to h - 1, w - 1 here).
        eps: regularisation, in squared grey units.

    Returns:
        mean_a, mean_b, grey: (N, 1, h, w) float32 each.
    """
    small_np = small.contiguous().numpy()
    n, h, w, _ = small_np.shape
    radius = max(0, min(radius, h - 1, w - 1))
    mean_a, mean_b, grey = (np.empty((n, h, w), np.float32) for _ in range(3))
    kernels.guided(small_np, airlight.float().contiguous().numpy(), float(omega), int(patch),
                   np.asarray(luma, np.float32), radius, float(eps), _workspace(n, h, w), mean_a, mean_b,
                   grey)  # fmt: skip
    return torch.from_numpy(mean_a)[:, None], torch.from_numpy(mean_b)[:, None], torch.from_numpy(grey)[:, None]
