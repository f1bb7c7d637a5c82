"""The numba kernels of ``dcp`` on the CPU (what each computes: :mod:`cliphaze.baselines.dcp_cpu`).

numba is imported at this module's import: only :func:`cliphaze.baselines.dcp_cpu.get_kernels` imports it,
after :func:`cliphaze.user_cache.import_numba` has pointed numba's cache at the user cache directory.
The kernels are module-level functions, not closures: numba's ``cache=True`` keys a closure by its cells,
and a cell holding another kernel never matched, so every process compiled the estimate kernels again
(17 s at each start).
"""

from __future__ import annotations

import numba
import numpy as np

jit = numba.njit(parallel=True, fastmath=True, cache=True)


@jit
def block_mean(frames: np.ndarray, sub: int, out: np.ndarray) -> None:  # pragma: no cover - numba
    n, h, w, _ = out.shape
    inv = np.float32(1.0 / (sub * sub))
    used = w * sub * 3  # bytes of each input row that fall in a block (avg_pool2d drops the remainder)
    for job in numba.prange(n * h):
        i = job // h
        y = job % h
        # the block's rows summed first, as whole rows of integers (they vectorize), then each block's columns;
        # integer sums are exact, so the result is the same as summing pixel by pixel
        rows = np.zeros(used, np.int32)
        for dy in range(sub):
            line = frames[i, y * sub + dy].reshape(-1)
            for k in range(used):
                rows[k] += line[k]
        for x in range(w):
            s0 = 0
            s1 = 0
            s2 = 0
            for dx in range(sub):
                k = (x * sub + dx) * 3
                s0 += rows[k]
                s1 += rows[k + 1]
                s2 += rows[k + 2]
            out[i, y, x, 0] = np.float32(s0) * inv
            out[i, y, x, 1] = np.float32(s1) * inv
            out[i, y, x, 2] = np.float32(s2) * inv


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
    l0, l1, l2 = luma[0], luma[1], luma[2]
    for job in numba.prange(n * height):
        i = job // height
        r = job % height
        src = max((r + 0.5) * scale_y - 0.5, 0.0)
        y0 = min(int(src), h - 1)
        y1 = min(y0 + 1, h - 1)
        ly = np.float32(src - y0)
        a0, a1, a2 = airlight[i, 0], airlight[i, 1], airlight[i, 2]
        # the row's coefficients interpolated vertically once, at the working width (1.5x faster at 1080p
        # than interpolating both rows at every pixel)
        row_a = np.empty(w, np.float32)
        row_b = np.empty(w, np.float32)
        for j in range(w):
            row_a[j] = mean_a[i, y0, j] + ly * (mean_a[i, y1, j] - mean_a[i, y0, j])
            row_b[j] = mean_b[i, y0, j] + ly * (mean_b[i, y1, j] - mean_b[i, y0, j])
        pixels = frames[i, r]
        dst = out[i, r]
        for c in range(width):
            fx = lx[c]
            ja, jb = x0[c], x1[c]
            a = row_a[ja] + fx * (row_a[jb] - row_a[ja])
            b = row_b[ja] + fx * (row_b[jb] - row_b[ja])
            p0 = np.float32(pixels[c, 0])
            p1 = np.float32(pixels[c, 1])
            p2 = np.float32(pixels[c, 2])
            t = min(max(a * (l0 * p0 + l1 * p1 + l2 * p2) + b, lo), np.float32(1.0))
            inv = np.float32(1.0) / t
            v0 = min(max((p0 - a0) * inv + a0, np.float32(0.0)), np.float32(255.0))
            v1 = min(max((p1 - a1) * inv + a1, np.float32(0.0)), np.float32(255.0))
            v2 = min(max((p2 - a2) * inv + a2, np.float32(0.0)), np.float32(255.0))
            dst[c, 0] = np.uint8(v0 + np.float32(0.5))
            dst[c, 1] = np.uint8(v1 + np.float32(0.5))
            dst[c, 2] = np.uint8(v2 + np.float32(0.5))


@numba.njit(inline="always")
def reflect(j: int, n: int) -> int:  # pragma: no cover - numba
    """Index ``j`` of a row of ``n`` reflected at both ends without repeating the edge (torch "reflect")."""
    if j < 0:
        return -j
    if j >= n:
        return 2 * (n - 1) - j
    return j


@numba.njit(fastmath=True, cache=True)
def box(src: np.ndarray, radius: int, rows: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - numba
    """Mean over the (2 radius + 1)^2 window of (h, w), reflected borders (radius < h, w): sliding sums in
    float64 (``rows``: (h, w) float64 scratch), along rows four rows at a time (four independent add
    chains), then down the columns."""
    h, w = src.shape
    for y0 in range(0, h, 4):
        for y in range(y0, min(y0 + 4, h)):  # the first window of each row
            s = 0.0
            for dx in range(-radius, radius + 1):
                s += src[y, reflect(dx, w)]
            rows[y, 0] = s
        if y0 + 4 <= h:
            s0, s1, s2, s3 = rows[y0, 0], rows[y0 + 1, 0], rows[y0 + 2, 0], rows[y0 + 3, 0]
            for x in range(1, w):
                a, b = reflect(x + radius, w), reflect(x - radius - 1, w)
                s0 += src[y0, a] - src[y0, b]
                s1 += src[y0 + 1, a] - src[y0 + 1, b]
                s2 += src[y0 + 2, a] - src[y0 + 2, b]
                s3 += src[y0 + 3, a] - src[y0 + 3, b]
                rows[y0, x], rows[y0 + 1, x], rows[y0 + 2, x], rows[y0 + 3, x] = s0, s1, s2, s3
        else:
            for y in range(y0, h):
                s = rows[y, 0]
                for x in range(1, w):
                    s += src[y, reflect(x + radius, w)] - src[y, reflect(x - radius - 1, w)]
                    rows[y, x] = s
    acc = np.zeros(w, np.float64)
    for dy in range(-radius, radius + 1):
        first = rows[reflect(dy, h)]
        for x in range(w):
            acc[x] += first[x]
    inv = 1.0 / (2 * radius + 1) ** 2
    for x in range(w):
        out[0, x] = acc[x] * inv
    for y in range(1, h):
        add = rows[reflect(y + radius, h)]
        sub = rows[reflect(y - radius - 1, h)]
        for x in range(w):
            acc[x] += add[x] - sub[x]
            out[y, x] = acc[x] * inv


@numba.njit(fastmath=True, cache=True)
def min_filter(src: np.ndarray, patch: int, rows: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - numba
    """``patch`` x ``patch`` minimum of (h, w), the window cut to the image (``rows``: (h, w) scratch):
    separable, each pass a few whole-row minima (they vectorize); minima are exact in any order."""
    h, w = src.shape
    radius = patch // 2
    for y in range(h):
        row, acc = src[y], rows[y]
        for x in range(w):
            acc[x] = row[x]
        for d in range(1, radius + 1):
            for x in range(w - d):
                acc[x] = min(acc[x], row[x + d])
            for x in range(d, w):
                acc[x] = min(acc[x], row[x - d])
    for y in range(h):
        lo, hi = max(0, y - radius), min(h, y + radius + 1)
        acc, first = out[y], rows[lo]
        for x in range(w):
            acc[x] = first[x]
        for j in range(lo + 1, hi):
            other = rows[j]
            for x in range(w):
                acc[x] = min(acc[x], other[x])


@numba.njit(cache=True)
def dark(small: np.ndarray, patch: int, work: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - numba
    n, h, w, _ = small.shape
    for i in range(n):
        channel_min = work[i, 0]
        for y in range(h):
            for x in range(w):
                channel_min[y, x] = min(small[i, y, x, 0], small[i, y, x, 1], small[i, y, x, 2])
        min_filter(channel_min, patch, work[i, 1], out[i])


@numba.njit(fastmath=True, cache=True)
def guided(small: np.ndarray, airlight: np.ndarray, omega: float, patch: int, luma: np.ndarray, radius: int,
           eps: float, work: np.ndarray, out_a: np.ndarray, out_b: np.ndarray,
           out_grey: np.ndarray) -> None:  # pragma: no cover - numba  # fmt: skip
    n, h, w, _ = small.shape
    for i in range(n):
        # eight (h, w) float64 scratch planes, reused once their content is consumed
        scratch, rows, t_raw, guide_sq, guide_t = work[i, 0], work[i, 1], work[i, 2], work[i, 3], work[i, 4]
        mean_i, mean_ii, mean_p, mean_ip = work[i, 5], work[i, 6], work[i, 7], work[i, 0]
        inv0, inv1, inv2 = 1.0 / airlight[i, 0], 1.0 / airlight[i, 1], 1.0 / airlight[i, 2]
        grey = out_grey[i]
        for y in range(h):
            for x in range(w):
                p0, p1, p2 = small[i, y, x, 0], small[i, y, x, 1], small[i, y, x, 2]
                scratch[y, x] = min(p0 * inv0, p1 * inv1, p2 * inv2)
                grey[y, x] = luma[0] * p0 + luma[1] * p1 + luma[2] * p2
        min_filter(scratch, patch, rows, t_raw)
        for y in range(h):
            for x in range(w):
                t_raw[y, x] = 1.0 - omega * t_raw[y, x]
                g = np.float64(grey[y, x])
                guide_sq[y, x] = g * g
                guide_t[y, x] = g * t_raw[y, x]
        box(grey, radius, rows, mean_i)
        box(guide_sq, radius, rows, mean_ii)
        box(t_raw, radius, rows, mean_p)
        box(guide_t, radius, rows, mean_ip)
        coef_a, coef_b = guide_sq, guide_t  # consumed
        for y in range(h):
            for x in range(w):
                var = mean_ii[y, x] - mean_i[y, x] * mean_i[y, x]
                cov = mean_ip[y, x] - mean_i[y, x] * mean_p[y, x]
                a = cov / (var + eps)
                coef_a[y, x] = a
                coef_b[y, x] = mean_p[y, x] - a * mean_i[y, x]
        box(coef_a, radius, rows, out_a[i])
        box(coef_b, radius, rows, out_b[i])
