"""The numba kernels of the ``cpu_fused`` scan (:mod:`cliphaze.ops.scan.cpu_fused` documents the maths).

They live at module level, compiled with ``cache=True``, so later processes load the machine code from
numba's on-disk cache, in the user's cache directory (:mod:`cliphaze.user_cache`). (As closures built
inside a function and calling each other they were compiled again in every process, about 40 s, and each
compilation appended another cache entry.) Importing this module imports numba: only ``cpu_fused``'s
probe does, on the first CPU scan.

``delta`` is always the final step size ``softplus(delta + bias)``: ``cpu_fused.step_sizes`` computes it with
torch before the call, and autograd takes its gradient back to the raw delta and bias.
"""

from __future__ import annotations

import math

import numpy as np

from cliphaze.user_cache import import_numba

numba = import_numba()  # this module is the lazy point: only cpu_fused's probe imports it

# fastmath flags of the parallel kernels (below); no nnan/ninf: NaN and inf still propagate.
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

# reassoc/contract let LLVM vectorise the N-state dot products and use FMAs (summation order changes at
# float rounding level); the exp helpers are compiled with contract only (FMAs, x1.2 on the forward kernel;
# an FMA only makes the Cody-Waite reduction more exact), never reassociated, so the reduction survives.
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

    Time runs in chunks of ck_len steps: the chunk's decays exp(dt * A) are computed first (vectorised
    across steps and states), then the recurrence.
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
