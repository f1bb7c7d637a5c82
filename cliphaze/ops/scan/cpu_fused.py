"""The fast CPU selective scan: fused numba kernels with their own reverse-time backward.

The kernels run parallel over (batch, channel) and keep the N states of one channel in a small local
array, so the (L, Dm, N) state tensor is never stored. The forward saves the state entering every
chunk of ``CHECKPOINT_STEPS`` steps; the backward walks time in reverse, recomputing each chunk's
states from its checkpoint. float32 and float64 kernels (numba specialises per dtype); half and
bfloat16 inputs run in float32.

Per chunk the decays exp(dt * A) of all steps and states are computed first, in a loop LLVM vectorises:
in float32 with a polynomial exp (numba has no vector exp here; libm's scalar exp was most of the time),
in float64 with libm's exp (the exact ground truth for gradcheck). The recurrences' N-state sums may be
reassociated (fastmath reassoc/contract), so results differ from a strict sequential sum at rounding level.

numba is imported only inside this module, when the backend is first probed (the first CPU scan),
and compiled with ``cache=True`` so later processes load the machine code from disk. No numba, or a
compile failure, makes the backend unavailable with the reason; it never crashes the import.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cliphaze.ops.scan.base import (
    GROUPED_NDIM,
    SHARED_NDIM,
    BackendUnavailable,
    ScanResult,
    check_scan_args,
    compute_dtype,
)

logger = logging.getLogger(__name__)

# Time steps between saved states; the backward recomputes at most this many states per chunk.
CHECKPOINT_STEPS = 64
# The backward aims for at least this many parallel jobs per numba thread (load balance).
JOBS_PER_THREAD = 4
# fastmath flags of the parallel kernels (see _build_kernels); no nnan/ninf: NaN and inf still propagate.
KERNEL_FASTMATH = frozenset({"reassoc", "contract"})
# ... and of the exp helpers: fused multiply-adds, no reassociation (the range reduction must stay ordered).
EXP_FASTMATH = frozenset({"contract"})
# Fast float32 exp: arguments are clamped to this range (below: ~1e-38 instead of a denormal or 0; above:
# ~1.6e38 instead of inf); ln 2 split in a high part exact in a few bits and a low correction (Cody-Waite).
EXP_ARG_MIN = -87.0
EXP_ARG_MAX = 88.0
LOG2_E = 1.4426950408889634
LN2_HI = 0.693359375
LN2_LO = -2.12194440e-4
# 1/7!, ..., 1/2! (then 1, 1): Horner coefficients of exp(r) on |r| <= ln2/2; truncation error < 6e-9,
# below float32's ulp.
EXP_TAYLOR_7, EXP_TAYLOR_6, EXP_TAYLOR_5 = 1 / 5040, 1 / 720, 1 / 120
EXP_TAYLOR_4, EXP_TAYLOR_3, EXP_TAYLOR_2 = 1 / 24, 1 / 6, 1 / 2
FLOAT32_EXP_BIAS = 127
FLOAT32_MANTISSA_BITS = 23
INSTALL_HINT = "install numba with: pip install 'numba>=0.59' (a cliphaze dependency)"


@dataclass(frozen=True)
class FusedKernels:
    """The compiled kernels and how long building them took."""

    forward: Callable[..., None]  # forward_kernel below, jitted
    backward: Callable[..., None]  # backward_kernel below, jitted
    cross_forward: Callable[..., None]  # cross_forward_kernel: SS2D's four directions in one call
    cross_backward: Callable[..., None]  # cross_backward_kernel
    num_threads: int  # numba's thread count
    build_s: float  # import + compile (or cache load) time of the probe, seconds


def _build_kernels(numba: Any, started: float) -> FusedKernels:
    """Jit the kernels and run them once on tiny inputs so compile errors surface here."""
    # reassoc/contract let LLVM vectorise the N-state dot products and use FMAs (summation order changes at
    # float rounding level); the exp helpers below are compiled with contract only (FMAs, x1.2 on the forward
    # kernel; an FMA only makes the Cody-Waite reduction more exact), never reassociated, so it survives.
    jit = numba.njit(parallel=True, fastmath=set(KERNEL_FASTMATH), cache=True)
    strict = numba.njit(fastmath=set(EXP_FASTMATH), cache=True)

    @strict
    def exp_parts(x):
        """exp(x) = p * 2**k for float32 x, as (p, k): Cody-Waite reduction, degree-7 Taylor polynomial."""
        x = min(max(x, np.float32(EXP_ARG_MIN)), np.float32(EXP_ARG_MAX))
        k = np.floor(x * np.float32(LOG2_E) + np.float32(0.5))
        r = x - k * np.float32(LN2_HI) - k * np.float32(LN2_LO)  # |r| <= ln2 / 2
        p = np.float32(EXP_TAYLOR_7)
        p = p * r + np.float32(EXP_TAYLOR_6)
        p = p * r + np.float32(EXP_TAYLOR_5)
        p = p * r + np.float32(EXP_TAYLOR_4)
        p = p * r + np.float32(EXP_TAYLOR_3)
        p = p * r + np.float32(EXP_TAYLOR_2)
        p = p * r + np.float32(1.0)
        p = p * r + np.float32(1.0)
        return p, np.int32(k)

    @strict
    def decay_block(dtbuf, A, d, steps, fast_exp, abuf, ebuf):
        """abuf[i, n] = exp(dtbuf[i] * A[d, n]) for i < steps.

        fast_exp (float32 only): a branch-free polynomial exp that LLVM vectorises, the power of two
        built from its exponent bits (ebuf, int32, seen through a float32 view); else libm's exp.
        """
        n_state = A.shape[1]
        if fast_exp:
            pow2 = ebuf.view(np.float32)
            for i in range(steps):
                for n in range(n_state):
                    p, k = exp_parts(dtbuf[i] * A[d, n])
                    abuf[i, n] = p
                    ebuf[i, n] = (k + np.int32(FLOAT32_EXP_BIAS)) << np.int32(FLOAT32_MANTISSA_BITS)
            for i in range(steps):
                for n in range(n_state):
                    abuf[i, n] *= pow2[i, n]
        else:
            for i in range(steps):
                for n in range(n_state):
                    abuf[i, n] = np.exp(dtbuf[i] * A[d, n])

    @jit
    def forward_kernel(u, delta, A, bmat, cmat, dskip, z, has_z, fast_exp, ck_len, out, ckpt, last):
        """Forward scan, parallel over (batch, channel); the N states live in a small local array.

        Time runs in chunks of ck_len steps: the chunk's step sizes and decays exp(dt * A) are computed
        first (vectorised across steps and states), then the recurrence.
        """
        n_batch, dim, length = u.shape
        n_state = A.shape[1]
        b_per = dim // bmat.shape[1]
        c_per = dim // cmat.shape[1]
        b_var = bmat.shape[2] > 1
        c_var = cmat.shape[2] > 1
        n_ck = ckpt.shape[2]
        for job in numba.prange(n_batch * dim):
            bi = job // dim
            d = job - bi * dim
            bb = bi if bmat.shape[0] > 1 else 0
            cb = bi if cmat.shape[0] > 1 else 0
            gb = d // b_per
            gc = d // c_per
            h = np.zeros(n_state, dtype=u.dtype)
            abuf = np.empty((ck_len, n_state), dtype=u.dtype)
            ebuf = np.empty((ck_len, n_state), dtype=np.int32)
            dtbuf = np.empty(ck_len, dtype=u.dtype)
            for k in range(n_ck):
                t0 = k * ck_len
                steps = min(length, t0 + ck_len) - t0
                ckpt[bi, d, k, :] = h
                for i in range(steps):
                    dtbuf[i] = delta[bi, d, t0 + i]
                decay_block(dtbuf, A, d, steps, fast_exp, abuf, ebuf)
                for i in range(steps):
                    t = t0 + i
                    ut = u[bi, d, t]
                    tb = t if b_var else 0
                    tc = t if c_var else 0
                    dtu = dtbuf[i] * ut
                    acc = 0.0
                    for n in range(n_state):
                        hn = abuf[i, n] * h[n] + dtu * bmat[bb, gb, tb, n]
                        h[n] = hn
                        acc += cmat[cb, gc, tc, n] * hn
                    y = acc + dskip[d] * ut
                    if has_z:
                        zt = z[bi, d, t]
                        y = y * zt / (1.0 + math.exp(-zt))
                    out[bi, d, t] = y
            last[bi, d, :] = h


    @jit
    def backward_kernel(
        u, delta, A, bmat, cmat, dskip, z, has_z, fast_exp, ck_len, ckpt, gout, block,
        gu, gdelta, gz, ga_part, gd_part, gb_part, gc_part,
    ):  # fmt: skip
        """Reverse-time backward, parallel over (batch, block of ``block`` channels inside one B and one C group).

        States are recomputed chunk by chunk from ``ckpt``; B/C gradients go to per-block partial sums so no
        two jobs write the same element.
        """
        n_batch, dim, length = u.shape
        n_state = A.shape[1]
        b_per = dim // bmat.shape[1]
        c_per = dim // cmat.shape[1]
        b_var = bmat.shape[2] > 1
        c_var = cmat.shape[2] > 1
        n_blocks = dim // block
        n_ck = ckpt.shape[2]
        for job in numba.prange(n_batch * n_blocks):
            bi = job // n_blocks
            blk = job - bi * n_blocks
            bb = bi if bmat.shape[0] > 1 else 0
            cb = bi if cmat.shape[0] > 1 else 0
            hbuf = np.empty((ck_len + 1, n_state), dtype=u.dtype)
            abuf = np.empty((ck_len, n_state), dtype=u.dtype)
            ebuf = np.empty((ck_len, n_state), dtype=np.int32)
            dtbuf = np.empty(ck_len, dtype=u.dtype)
            gh = np.empty(n_state, dtype=u.dtype)
            ga_acc = np.empty(n_state, dtype=np.float64)
            for d in range(blk * block, (blk + 1) * block):
                gb = d // b_per
                gc = d // c_per
                gh[:] = 0.0
                ga_acc[:] = 0.0
                gd_acc = 0.0
                for k in range(n_ck - 1, -1, -1):
                    t0 = k * ck_len
                    t1 = min(length, t0 + ck_len)
                    hbuf[0, :] = ckpt[bi, d, k, :]
                    for t in range(t0, t1):
                        dtbuf[t - t0] = delta[bi, d, t]
                    decay_block(dtbuf, A, d, t1 - t0, fast_exp, abuf, ebuf)
                    for t in range(t0, t1):
                        i = t - t0
                        dtu = dtbuf[i] * u[bi, d, t]
                        tb = t if b_var else 0
                        for n in range(n_state):
                            hbuf[i + 1, n] = abuf[i, n] * hbuf[i, n] + dtu * bmat[bb, gb, tb, n]
                    for t in range(t1 - 1, t0 - 1, -1):
                        i = t - t0
                        dt = dtbuf[i]
                        ut = u[bi, d, t]
                        tb = t if b_var else 0
                        tc = t if c_var else 0
                        gy = gout[bi, d, t]
                        if has_z:
                            acc = 0.0
                            for n in range(n_state):
                                acc += cmat[cb, gc, tc, n] * hbuf[i + 1, n]
                            y = acc + dskip[d] * ut
                            zt = z[bi, d, t]
                            sig = 1.0 / (1.0 + math.exp(-zt))
                            gz[bi, d, t] = gy * y * sig * (1.0 + zt * (1.0 - sig))
                            gy = gy * zt * sig
                        gd_acc += gy * ut
                        gu_t = gy * dskip[d]
                        gdt = 0.0
                        dtu = dt * ut
                        for n in range(n_state):
                            g = gh[n] + gy * cmat[cb, gc, tc, n]  # dL/dh_t
                            gc_part[bi, blk, tc, n] += gy * hbuf[i + 1, n]
                            a = abuf[i, n]
                            g_log = g * hbuf[i, n] * a  # dL/d(dt·A[d, n])
                            gdt += g_log * A[d, n]
                            ga_acc[n] += g_log * dt
                            bn = bmat[bb, gb, tb, n]
                            gdt += g * bn * ut
                            gb_part[bi, blk, tb, n] += g * dtu
                            gu_t += g * dt * bn
                            gh[n] = g * a
                        gdelta[bi, d, t] = gdt
                        gu[bi, d, t] = gu_t
                ga_part[bi, d, :] = ga_acc
                gd_part[bi, d] = gd_acc

    @strict
    def scan_pos(k, l, height, width, length):
        """Row-major grid position of step l of SS2D direction k (cliphaze.ops.cross_scan's orders)."""
        if k >= 2:
            l = length - 1 - l
        if k == 1 or k == 3:  # column-major: l = j * H + i
            j = l // height
            return (l - j * height) * width + j
        return l

    @jit
    def cross_forward_kernel(u, delta, A, bmat, cmat, dskip, fast_exp, ck_len, height, width,
                             out, ckpt):  # fmt: skip
        """SS2D's four scans of one channel in one job, read and merged in place (no cross-scan copies).

        u (b, D, L) and out (b, D, L, zeroed) are row-major grids; delta (b, K, D, L) and B/C (b, K, L, N)
        hold each direction's values at row-major positions; A, dskip are per (k, d) = k * D + d.
        out[b, d, p] = sum over k of direction k's output at position p.
        """
        n_batch, dim, length = u.shape
        n_dir = delta.shape[1]
        n_state = A.shape[1]
        n_ck = ckpt.shape[2]
        for job in numba.prange(n_batch * dim):
            bi = job // dim
            d = job - bi * dim
            h = np.zeros(n_state, dtype=u.dtype)
            abuf = np.empty((ck_len, n_state), dtype=u.dtype)
            ebuf = np.empty((ck_len, n_state), dtype=np.int32)
            dtbuf = np.empty(ck_len, dtype=u.dtype)
            posbuf = np.empty(ck_len, dtype=np.int64)
            for k in range(n_dir):
                kd = k * dim + d
                h[:] = 0.0
                for c in range(n_ck):
                    t0 = c * ck_len
                    steps = min(length, t0 + ck_len) - t0
                    ckpt[bi, kd, c, :] = h
                    for i in range(steps):
                        pos = scan_pos(k, t0 + i, height, width, length)
                        posbuf[i] = pos
                        dtbuf[i] = delta[bi, k, d, pos]
                    decay_block(dtbuf, A, kd, steps, fast_exp, abuf, ebuf)
                    for i in range(steps):
                        pos = posbuf[i]
                        ut = u[bi, d, pos]
                        dtu = dtbuf[i] * ut
                        acc = 0.0
                        for n in range(n_state):
                            hn = abuf[i, n] * h[n] + dtu * bmat[bi, k, pos, n]
                            h[n] = hn
                            acc += cmat[bi, k, pos, n] * hn
                        out[bi, d, pos] += acc + dskip[kd] * ut

    @jit
    def cross_backward_kernel(
        u, delta, A, bmat, cmat, dskip, fast_exp, ck_len, height, width, ckpt, gout, block,
        gu, gdelta, ga_part, gd_part, gb_part, gc_part,
    ):  # fmt: skip
        """Reverse-time backward of cross_forward_kernel, parallel over (batch, block of channels).

        A job owns its channels in every direction, so gu (zeroed) sums the four directions without races;
        B/C gradients go to per-block partials gb_part/gc_part (b, n_blocks, K, L, N), zeroed.
        """
        n_batch, dim, length = u.shape
        n_dir = delta.shape[1]
        n_state = A.shape[1]
        n_blocks = dim // block
        n_ck = ckpt.shape[2]
        for job in numba.prange(n_batch * n_blocks):
            bi = job // n_blocks
            blk = job - bi * n_blocks
            hbuf = np.empty((ck_len + 1, n_state), dtype=u.dtype)
            abuf = np.empty((ck_len, n_state), dtype=u.dtype)
            ebuf = np.empty((ck_len, n_state), dtype=np.int32)
            dtbuf = np.empty(ck_len, dtype=u.dtype)
            posbuf = np.empty(ck_len, dtype=np.int64)
            gh = np.empty(n_state, dtype=u.dtype)
            ga_acc = np.empty(n_state, dtype=np.float64)
            for d in range(blk * block, (blk + 1) * block):
                for k in range(n_dir):
                    kd = k * dim + d
                    gh[:] = 0.0
                    ga_acc[:] = 0.0
                    gd_acc = 0.0
                    for c in range(n_ck - 1, -1, -1):
                        t0 = c * ck_len
                        t1 = min(length, t0 + ck_len)
                        hbuf[0, :] = ckpt[bi, kd, c, :]
                        for t in range(t0, t1):
                            pos = scan_pos(k, t, height, width, length)
                            posbuf[t - t0] = pos
                            dtbuf[t - t0] = delta[bi, k, d, pos]
                        decay_block(dtbuf, A, kd, t1 - t0, fast_exp, abuf, ebuf)
                        for i in range(t1 - t0):
                            pos = posbuf[i]
                            dtu = dtbuf[i] * u[bi, d, pos]
                            for n in range(n_state):
                                hbuf[i + 1, n] = abuf[i, n] * hbuf[i, n] + dtu * bmat[bi, k, pos, n]
                        for i in range(t1 - t0 - 1, -1, -1):
                            pos = posbuf[i]
                            dt = dtbuf[i]
                            ut = u[bi, d, pos]
                            gy = gout[bi, d, pos]
                            gd_acc += gy * ut
                            gu_t = gy * dskip[kd]
                            gdt = 0.0
                            dtu = dt * ut
                            for n in range(n_state):
                                g = gh[n] + gy * cmat[bi, k, pos, n]  # dL/dh_t
                                gc_part[bi, blk, k, pos, n] += gy * hbuf[i + 1, n]
                                a = abuf[i, n]
                                g_log = g * hbuf[i, n] * a  # dL/d(dt·A[kd, n])
                                gdt += g_log * A[kd, n]
                                ga_acc[n] += g_log * dt
                                bn = bmat[bi, k, pos, n]
                                gdt += g * bn * ut
                                gb_part[bi, blk, k, pos, n] += g * dtu
                                gu_t += g * dt * bn
                                gh[n] = g * a
                            gdelta[bi, k, d, pos] = gdt
                            gu[bi, d, pos] += gu_t
                    ga_part[bi, kd, :] = ga_acc
                    gd_part[bi, kd] = gd_acc

    kernels = FusedKernels(forward_kernel, backward_kernel, cross_forward_kernel, cross_backward_kernel,
                           numba.get_num_threads(), 0.0)  # build_s set below
    for dtype in (np.float32, np.float64):
        _run_tiny(kernels, dtype)
    return FusedKernels(forward_kernel, backward_kernel, cross_forward_kernel, cross_backward_kernel,
                        kernels.num_threads, time.perf_counter() - started)


def _run_tiny(kernels: FusedKernels, dtype: type) -> None:
    """Forward and backward on a 1x2x3 problem with every option on: forces compilation for ``dtype``."""
    rng = np.random.default_rng(0)
    shape, n_state = (1, 2, 3), 2
    arrays = [rng.standard_normal(shape).astype(dtype) for _ in range(3)]  # u, delta, z
    u, delta, z = arrays
    A = -np.ones((2, n_state), dtype=dtype)
    bmat = np.ones((1, 1, 3, n_state), dtype=dtype)
    vec = np.ones(2, dtype=dtype)
    ckpt = np.empty((1, 2, 1, n_state), dtype=dtype)
    out = np.empty(shape, dtype=dtype)
    last = np.empty((1, 2, n_state), dtype=dtype)
    fast = dtype == np.float32
    kernels.forward(u, delta, A, bmat, bmat, vec, z, True, fast, CHECKPOINT_STEPS, out, ckpt, last)
    grads = [np.empty(shape, dtype=dtype) for _ in range(3)]
    parts = [np.zeros((1, 2, n_state), dtype=dtype), np.zeros((1, 2), dtype=dtype)]
    bc_parts = [np.zeros((1, 2, 3, n_state), dtype=dtype) for _ in range(2)]
    kernels.backward(u, delta, A, bmat, bmat, vec, z, True, fast, CHECKPOINT_STEPS, ckpt, out, 1,
                     *grads, *parts, *bc_parts)  # fmt: skip
    # SS2D cross kernels on a 1x3 grid (L = 3), 4 directions of 2 channels.
    n_dir = 4
    cdelta = rng.standard_normal((1, n_dir, 2, 3)).astype(dtype)
    ca = -np.ones((n_dir * 2, n_state), dtype=dtype)
    cbc = np.ones((1, n_dir, 3, n_state), dtype=dtype)
    cvec = np.ones(n_dir * 2, dtype=dtype)
    cckpt = np.empty((1, n_dir * 2, 1, n_state), dtype=dtype)
    cout = np.zeros(shape, dtype=dtype)
    kernels.cross_forward(u, cdelta, ca, cbc, cbc, cvec, fast, CHECKPOINT_STEPS, 1, 3, cout, cckpt)
    cparts = [np.zeros((1, n_dir * 2, n_state), dtype=dtype), np.zeros((1, n_dir * 2), dtype=dtype)]
    cbc_parts = [np.zeros((1, 2, n_dir, 3, n_state), dtype=dtype) for _ in range(2)]
    kernels.cross_backward(u, cdelta, ca, cbc, cbc, cvec, fast, CHECKPOINT_STEPS, 1, 3, cckpt, cout, 1,
                           np.zeros(shape, dtype=dtype), np.empty_like(cdelta), *cparts, *cbc_parts)  # fmt: skip


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[FusedKernels | None, str]:
    """Build the kernels once per process; (None, reason) when numba is missing or compilation fails."""
    started = time.perf_counter()
    try:
        import numba
        from numba.core.errors import NumbaError
    except ImportError as exc:
        return None, f"numba does not import ({exc}); {INSTALL_HINT}"
    try:
        kernels = _build_kernels(numba, started)
    except NumbaError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, f"numba could not compile the fused scan kernels ({type(exc).__name__}: {first_line})"
    logger.info("cpu_fused scan kernels ready in %.2f s (%d numba threads)", kernels.build_s, kernels.num_threads)
    return kernels, f"numba kernels, {kernels.num_threads} threads"


def get_kernels() -> FusedKernels:
    """The compiled kernels; raises BackendUnavailable with the reason if they cannot be built."""
    kernels, reason = _probe()
    if kernels is None:
        raise BackendUnavailable(f"scan backend 'cpu_fused' is unavailable: {reason}")
    return kernels


def _bc_layout(mat: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """B or C as the kernels' contiguous (bB, G, LB, N): (Dm, N) -> (1, Dm, 1, N), (b, N, L) -> (b, 1, L, N)."""
    mat = mat.detach().to(dtype)
    if mat.dim() == GROUPED_NDIM:
        return mat.transpose(-1, -2).contiguous()
    if mat.dim() == SHARED_NDIM:
        return mat.transpose(-1, -2)[:, None].contiguous()
    return mat[None, :, None, :].contiguous()


def _bc_grad(part: torch.Tensor, ndim: int, groups: int) -> torch.Tensor:
    """Reduce per-block partials (b, n_blocks, LB, N) to the gradient of B or C in its ``ndim`` layout."""
    batch, n_blocks, steps, n_state = part.shape
    grad = part.reshape(batch, groups, n_blocks // groups, steps, n_state).sum(2)  # (b, G, LB, N)
    if ndim == GROUPED_NDIM:
        return grad.transpose(-1, -2)
    if ndim == SHARED_NDIM:
        return grad[:, 0].transpose(-1, -2)
    return grad.sum(0)[:, 0, :]  # (Dm, N): summed over batch and time


def _block_size(batch: int, dim: int, b_groups: int, c_groups: int, num_threads: int) -> int:
    """Channels per backward job: a divisor of both group sizes, small enough to give every thread work."""
    block = math.gcd(dim // b_groups, dim // c_groups)
    while block > 1 and batch * (dim // block) < JOBS_PER_THREAD * num_threads:
        block = max(x for x in range(1, block) if block % x == 0)
    return block


def _use_fast_exp(dtype: torch.dtype) -> bool:
    """The polynomial exp for float32 (error ~1 ulp, vectorised); float64, the exact ground truth, keeps libm's."""
    return dtype == torch.float32


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.numpy()


def step_sizes(
    delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool, dtype: torch.dtype, bias_shape: tuple[int, ...]
) -> torch.Tensor:
    """The scan's step sizes ``softplus(delta + delta_bias)`` (or ``delta + delta_bias``) in ``dtype``, by torch.

    Vectorised by torch and differentiated by autograd: inside the kernels a scalar libm exp and log1p per
    step (and an exp per step of the backward) took about half of the forward's time (docs/performance.md).
    ``bias_shape`` views the per-channel bias against ``delta``.
    """
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype).view(bias_shape)
    return F.softplus(dt) if delta_softplus else dt


class _FusedScanFn(torch.autograd.Function):
    """autograd wrapper: numba forward, numba reverse-time backward; last_state carries no grad.

    ``dt`` are the final step sizes (:func:`step_sizes`), in the compute dtype.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        u: torch.Tensor,
        dt: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None,
        z: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        kernels = get_kernels()
        dtype = compute_dtype(u)
        batch, dim, length = u.shape
        n_state = A.shape[1]
        uf, dtf = (t.detach().to(dtype).contiguous() for t in (u, dt))
        af = A.detach().to(dtype).contiguous()
        bf, cf = _bc_layout(B, dtype), _bc_layout(C, dtype)
        df = torch.zeros(dim, dtype=dtype) if D is None else D.detach().to(dtype).contiguous()
        zf = torch.zeros((1, 1, 1), dtype=dtype) if z is None else z.detach().to(dtype).contiguous()
        n_ck = max(1, -(-length // CHECKPOINT_STEPS))
        ckpt = torch.empty((batch, dim, n_ck, n_state), dtype=dtype)
        out = torch.empty((batch, dim, length), dtype=dtype)
        last = torch.zeros((batch, dim, n_state), dtype=dtype)
        arrays = [_numpy(t) for t in (uf, dtf, af, bf, cf, df, zf)]
        kernels.forward(*arrays, z is not None, _use_fast_exp(dtype), CHECKPOINT_STEPS,
                        _numpy(out), _numpy(ckpt), _numpy(last))  # fmt: skip
        ctx.save_for_backward(uf, dtf, af, bf, cf, df, zf, ckpt)
        ctx.meta = (kernels, B.dim(), C.dim())
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (u, dt, A, B, C, D, z))
        ctx.mark_non_differentiable(last)
        return out.to(u.dtype), last

    @staticmethod
    def backward(ctx: Any, gout: torch.Tensor, _glast: torch.Tensor | None) -> tuple[Any, ...]:
        uf, dtf, af, bf, cf, df, zf, ckpt = ctx.saved_tensors
        kernels, b_ndim, c_ndim = ctx.meta
        has_z = ctx.dtypes[6] is not None
        dtype = uf.dtype
        batch, dim, length = uf.shape
        n_state = af.shape[1]
        block = _block_size(batch, dim, bf.shape[1], cf.shape[1], kernels.num_threads)
        n_blocks = dim // block
        grads = [torch.empty((batch, dim, length), dtype=dtype) for _ in range(2)]  # u, dt
        gz = torch.empty((batch, dim, length) if has_z else (1, 1, 1), dtype=dtype)
        ga_part = torch.zeros((batch, dim, n_state), dtype=dtype)
        gd_part = torch.zeros((batch, dim), dtype=dtype)
        gb_part = torch.zeros((batch, n_blocks, bf.shape[2], n_state), dtype=dtype)
        gc_part = torch.zeros((batch, n_blocks, cf.shape[2], n_state), dtype=dtype)
        gout_f = gout.detach().to(dtype).contiguous()
        inputs = [_numpy(t) for t in (uf, dtf, af, bf, cf, df, zf)]
        outputs = [_numpy(t) for t in (*grads, gz, ga_part, gd_part, gb_part, gc_part)]
        kernels.backward(*inputs, has_z, _use_fast_exp(dtype), CHECKPOINT_STEPS, _numpy(ckpt), _numpy(gout_f), block,
                         *outputs)  # fmt: skip
        full = (
            *grads,
            ga_part.sum(0),
            _bc_grad(gb_part, b_ndim, bf.shape[1]),
            _bc_grad(gc_part, c_ndim, cf.shape[1]),
            gd_part.sum(0),
            gz,
        )
        return tuple(None if dt is None else g.to(dt) for g, dt in zip(full, ctx.dtypes, strict=True))


class CpuFusedScan:
    """Fused numba scan for CPU tensors (forward and backward)."""

    name = "cpu_fused"

    def available(self, device: torch.device) -> tuple[bool, str]:
        """True for CPU tensors once the numba kernels compile (the first call compiles or loads the cache)."""
        if torch.device(device).type != "cpu":
            return False, f"cpu_fused runs on CPU tensors only, got device {device!s}"
        kernels, reason = _probe()
        return kernels is not None, reason

    def scan(
        self,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None = None,
        z: torch.Tensor | None = None,
        delta_bias: torch.Tensor | None = None,
        delta_softplus: bool = False,
        return_last_state: bool = False,
    ) -> ScanResult:
        """See ``cliphaze.ops.scan.base`` for shapes; the last state carries no grad (as in mamba_ssm)."""
        ok, reason = self.available(u.device)
        if not ok:
            raise BackendUnavailable(f"scan backend 'cpu_fused' is unavailable: {reason}")
        check_scan_args(u, delta, A, B, C, D, z, delta_bias)
        dt = step_sizes(delta, delta_bias, delta_softplus, compute_dtype(u), (-1, 1))
        out, last = _FusedScanFn.apply(u, dt, A, B, C, D, z)
        return (out, last) if return_last_state else out
