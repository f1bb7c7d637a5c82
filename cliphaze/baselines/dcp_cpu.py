"""The two full-resolution passes of ``dcp`` on the CPU, as fused numba kernels.

Everything DCP estimates (dark channel, airlight, transmission, the guided filter's coefficients)
lives at the working resolution; only two passes touch every pixel of the frame:

* ``block_mean``: uint8 (N, H, W, 3) -> float32 (N, H // s, W // s, 3), the mean of each s x s block
  (``avg_pool2d`` with kernel = stride = s, reading the 8-bit frame directly: no float copy of it).
* ``restore``: uint8 frame + low-resolution guided-filter coefficients -> uint8 dehazed frame, in one
  pass per pixel: bilinear upsampling of the coefficients (PyTorch's ``align_corners=False``
  sampling), the grey guide, ``t = a * grey + b`` clamped to [t0, 1], ``J = (I - A) / t + A``,
  rounding and saturation. The torch path does the same in ~8 full-frame tensor passes.

numba is imported here only, when the kernels are first needed, and compiled with ``cache=True`` (the cache
in the user's cache directory, see :mod:`cliphaze.user_cache`).
Without numba (or if it fails to compile) :func:`get_kernels` returns None and ``dcp`` keeps its
torch path, which gives the same frames within one 8-bit level.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cliphaze.user_cache import import_numba

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DcpKernels:
    """The compiled kernels (see the module docstring for what each computes)."""

    block_mean: Callable[..., None]  # (frames u8 NHWC, sub, out f32 N h w 3)
    restore: Callable[..., None]  # (frames u8 NHWC, mean_a f32 N h w, mean_b, airlight f32 N 3, luma f32 3, t0, out u8)


def _build(numba: Any) -> DcpKernels:
    jit = numba.njit(parallel=True, fastmath=True, cache=True)

    @jit
    def block_mean(frames: np.ndarray, sub: int, out: np.ndarray) -> None:  # pragma: no cover - numba
        n, h, w, _ = out.shape
        inv = np.float32(1.0 / (sub * sub))
        for job in numba.prange(n * h):
            i = job // h
            y = job % h
            for x in range(w):
                s0 = np.float32(0.0)
                s1 = np.float32(0.0)
                s2 = np.float32(0.0)
                for dy in range(sub):
                    row = y * sub + dy
                    for dx in range(sub):
                        col = x * sub + dx
                        s0 += np.float32(frames[i, row, col, 0])
                        s1 += np.float32(frames[i, row, col, 1])
                        s2 += np.float32(frames[i, row, col, 2])
                out[i, y, x, 0] = s0 * inv
                out[i, y, x, 1] = s1 * inv
                out[i, y, x, 2] = s2 * inv

    @jit
    def restore(frames: np.ndarray, mean_a: np.ndarray, mean_b: np.ndarray, airlight: np.ndarray,
                luma: np.ndarray, t0: float, out: np.ndarray) -> None:  # pragma: no cover - numba  # fmt: skip
        n, height, width, _ = frames.shape
        h, w = mean_a.shape[1], mean_a.shape[2]
        # Column sampling positions are the same on every row: compute them once.
        x0 = np.empty(width, np.int64)
        x1 = np.empty(width, np.int64)
        lx = np.empty(width, np.float32)
        scale_x = w / width
        for c in range(width):
            src = (c + 0.5) * scale_x - 0.5
            src = max(src, 0.0)
            i0 = min(int(src), w - 1)
            x0[c] = i0
            x1[c] = min(i0 + 1, w - 1)
            lx[c] = src - i0
        scale_y = h / height
        lo = np.float32(t0)
        for job in numba.prange(n * height):
            i = job // height
            r = job % height
            src = max((r + 0.5) * scale_y - 0.5, 0.0)
            y0 = min(int(src), h - 1)
            y1 = min(y0 + 1, h - 1)
            ly = np.float32(src - y0)
            a0, a1, a2 = airlight[i, 0], airlight[i, 1], airlight[i, 2]
            for c in range(width):
                fx = lx[c]
                ja, jb = x0[c], x1[c]
                ta = mean_a[i, y0, ja] + fx * (mean_a[i, y0, jb] - mean_a[i, y0, ja])
                ba = mean_a[i, y1, ja] + fx * (mean_a[i, y1, jb] - mean_a[i, y1, ja])
                tb = mean_b[i, y0, ja] + fx * (mean_b[i, y0, jb] - mean_b[i, y0, ja])
                bb = mean_b[i, y1, ja] + fx * (mean_b[i, y1, jb] - mean_b[i, y1, ja])
                a = ta + ly * (ba - ta)
                b = tb + ly * (bb - tb)
                p0 = np.float32(frames[i, r, c, 0])
                p1 = np.float32(frames[i, r, c, 1])
                p2 = np.float32(frames[i, r, c, 2])
                t = a * (luma[0] * p0 + luma[1] * p1 + luma[2] * p2) + b
                t = min(max(t, lo), np.float32(1.0))
                inv = np.float32(1.0) / t
                v0 = min(max((p0 - a0) * inv + a0, np.float32(0.0)), np.float32(255.0))
                v1 = min(max((p1 - a1) * inv + a1, np.float32(0.0)), np.float32(255.0))
                v2 = min(max((p2 - a2) * inv + a2, np.float32(0.0)), np.float32(255.0))
                out[i, r, c, 0] = np.uint8(v0 + np.float32(0.5))
                out[i, r, c, 1] = np.uint8(v1 + np.float32(0.5))
                out[i, r, c, 2] = np.uint8(v2 + np.float32(0.5))

    return DcpKernels(block_mean=block_mean, restore=restore)


@functools.lru_cache(maxsize=1)
def get_kernels() -> DcpKernels | None:
    """The compiled kernels, built once per process; None (logged once) when numba is unavailable."""
    try:
        numba = import_numba()
        from numba.core.errors import NumbaError
    except ImportError as exc:
        logger.warning("dcp: numba does not import (%s); using the slower torch path", exc)
        return None
    try:
        kernels = _build(numba)
        # Compile (or load from the cache) now, on a tiny frame, so a failure shows here and not mid-stream.
        tiny = np.zeros((1, 2, 2, 3), np.uint8)
        kernels.block_mean(tiny, 2, np.empty((1, 1, 1, 3), np.float32))
        coef = np.zeros((1, 1, 1), np.float32)
        kernels.restore(tiny, coef, coef, np.zeros((1, 3), np.float32), np.ones(3, np.float32), 0.1,
                        np.empty_like(tiny))  # fmt: skip
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
