"""Triton kernels of the ``triton`` selective-scan backend (imported only by :mod:`.triton_scan`).

Notation per channel ``c`` (N states, time ``t``): ``dt_t = softplus(delta_t + bias)``, ``a_t = exp(dt_t·A)``,
``x_t = dt_t·u_t·B_t``, ``h_t = a_t·h_{t-1} + x_t``, ``y_t = Σ_n C_t·h_t``, out ``(y_t + D·u_t)·SiLU(z_t)``.

Time is cut into chunks of ``chunk_blocks`` blocks of ``BLOCK_T`` steps. Each program owns one (channel,
chunk, batch) and walks its chunk block by block; inside a block the recurrence is a ``tl.associative_scan``
over a (BLOCK_T, N) tile of affine maps ``h -> a·h + x``, the state entering the block is the carry.

Forward: ``scan_fwd_kernel`` from a zero state gives each chunk's end state and its Σ dt (the chunk's decay
is ``exp(A·Σ dt)``); ``chain_kernel`` walks the chunks sequentially (a few dozen steps) and writes the state
entering each chunk (the backward's checkpoints); ``scan_fwd_kernel`` again, with those carries, writes out.

Backward, with the adjoint ``λ_t = ∂L/∂h_t = gy_t·C_t + a_{t+1}·λ_{t+1}`` (``gy = ∂L/∂y``):
``scan_bwd_chunk_kernel`` gives each chunk's ``λ`` at its first step from a zero carry and the chunk's
shifted Σ dt; ``chain_kernel`` in reverse gives the ``λ`` entering each chunk from the right;
``scan_bwd_kernel`` re-runs the chunk forward (block-start states into a small scratch buffer), then walks
its blocks in reverse with a reverse ``associative_scan`` for ``λ`` and writes every gradient.

``CROSS`` kernels read SS2D's row-major grid in direction ``k = c // dim_per_dir``'s order (dir 0 row-major,
dir 1 column-major, dirs 2 and 3 reversed; :mod:`cliphaze.ops.cross_scan`) and add their output (and ``du``)
into row-major buffers with atomics. Loads are in the tensors' own dtype; all maths in ``ACC``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _combine(a1, x1, a2, x2):
    """Compose the affine maps h -> a1·h + x1, then h -> a2·h + x2 (scan order)."""
    return a1 * a2, x1 * a2 + x2


@triton.jit
def _positions(t, k, length, height, width, CROSS: tl.constexpr):
    """Grid position (row-major) visited at step ``t`` of direction ``k``; ``t`` itself without CROSS."""
    t = tl.minimum(t, length - 1)  # masked tail steps: any valid address
    pos = t
    if CROSS:
        tt = tl.where(k >= 2, length - 1 - t, t)
        pos = tl.where((k % 2) == 1, (tt % height) * width + tt // height, tt)
    return pos


@triton.jit
def _sigmoid(x):
    """Overflow-free logistic function."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _pre_softplus(dl_ptr, offs, mask, bias, HAS_BIAS: tl.constexpr, ACC: tl.constexpr):
    """Raw delta (+ bias) at ``offs``, in ACC; 0 where masked."""
    x = tl.load(dl_ptr + offs, mask=mask, other=0.0).to(ACC)
    if HAS_BIAS:
        x = x + bias
    return x


@triton.jit
def _step_sizes(x, mask, SOFTPLUS: tl.constexpr):
    """dt = softplus(x) (overflow-free) or x; 0 where masked, so masked steps are the identity map."""
    if SOFTPLUS:
        x = tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))
    return tl.where(mask, x, 0.0)


@triton.jit
def _load_bc(ptr, base, pos, s_n, s_l, offs_n, mask_t, mask_n, ACC: tl.constexpr):
    """A (BLOCK_T, N_PAD) tile of B or C at grid positions ``pos``."""
    offs = base + offs_n[None, :] * s_n + pos[:, None] * s_l
    return tl.load(ptr + offs, mask=mask_t[:, None] & mask_n[None, :], other=0.0).to(ACC)


@triton.jit
def _row(tile, rows, which):
    """Row ``which`` of a (BLOCK_T, N_PAD) tile as an (N_PAD,) vector."""
    return tl.sum(tl.where((rows == which)[:, None], tile, 0.0), axis=0)


@triton.jit
def scan_fwd_kernel(
    u_ptr, dl_ptr, z_ptr, a_ptr, b_ptr, c_ptr, d_ptr, bias_ptr,
    out_ptr, carry_ptr, end_ptr, dtsum_ptr, last_ptr,
    length, n_ch, u_channels, dim_per_dir, b_group, c_group, height, width, chunk_blocks, n_chunks, d_state,
    su_b, su_c, su_l, sd_b, sd_c, sd_l, sz_b, sz_c, sz_l,
    sb_b, sb_g, sb_n, sb_l, sc_b, sc_g, sc_n, sc_l, so_b, so_c, so_l,
    N_PAD: tl.constexpr, BLOCK_T: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, B_VARYING: tl.constexpr, C_VARYING: tl.constexpr,
    CROSS: tl.constexpr, HAS_CARRY: tl.constexpr, WRITE_OUT: tl.constexpr, WRITE_LAST: tl.constexpr,
    ACC: tl.constexpr,
):  # fmt: skip
    """One (channel, chunk, batch): scan the chunk from its carry (or zero).

    WRITE_OUT: write out (stored, or atomically added when CROSS) and, if WRITE_LAST, the last chunk's end
    state. Otherwise write the chunk's end state and Σ dt for ``chain_kernel``.
    """
    c = tl.program_id(0)
    chunk = tl.program_id(1)
    bi = tl.program_id(2).to(tl.int64)
    k = c // dim_per_dir
    uc = c % u_channels
    offs_n = tl.arange(0, N_PAD)
    mask_n = offs_n < d_state
    rows = tl.arange(0, BLOCK_T)
    A = tl.load(a_ptr + c * d_state + offs_n, mask=mask_n, other=0.0).to(ACC)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + c).to(ACC)
    u_base = bi * su_b + uc * su_c
    dl_base = bi * sd_b + c * sd_c
    b_base = bi * sb_b + (c // b_group) * sb_g
    c_base = bi * sc_b + (c // c_group) * sc_g
    if not B_VARYING:
        b_inv = tl.load(b_ptr + b_base + offs_n * sb_n, mask=mask_n, other=0.0).to(ACC)
    if not C_VARYING:
        c_inv = tl.load(c_ptr + c_base + offs_n * sc_n, mask=mask_n, other=0.0).to(ACC)
    state_row = (bi * n_ch + c) * n_chunks + chunk
    if HAS_CARRY:
        h = tl.load(carry_ptr + state_row * d_state + offs_n, mask=mask_n, other=0.0).to(ACC)
    else:
        h = tl.zeros([N_PAD], dtype=ACC)
    dt_acc = tl.zeros([BLOCK_T], dtype=ACC)
    t_start = chunk * chunk_blocks * BLOCK_T
    n_blocks = tl.minimum(chunk_blocks, tl.cdiv(length - t_start, BLOCK_T))
    for j in range(0, n_blocks):
        t = t_start + j * BLOCK_T + rows
        mask_t = t < length
        pos = _positions(t, k, length, height, width, CROSS)
        u = tl.load(u_ptr + u_base + pos * su_l, mask=mask_t, other=0.0).to(ACC)
        dt = _step_sizes(_pre_softplus(dl_ptr, dl_base + pos * sd_l, mask_t, bias, HAS_BIAS, ACC), mask_t, SOFTPLUS)
        dt_acc += dt
        a = tl.exp(dt[:, None] * A[None, :])
        if B_VARYING:
            bt = _load_bc(b_ptr, b_base, pos, sb_n, sb_l, offs_n, mask_t, mask_n, ACC)
        else:
            bt = b_inv[None, :]
        x = (dt * u)[:, None] * bt
        a_cum, x_cum = tl.associative_scan((a, x), 0, _combine)
        hs = a_cum * h[None, :] + x_cum
        h = _row(hs, rows, BLOCK_T - 1)  # masked tail steps are identities: the last valid state
        if WRITE_OUT:
            if C_VARYING:
                ct = _load_bc(c_ptr, c_base, pos, sc_n, sc_l, offs_n, mask_t, mask_n, ACC)
            else:
                ct = c_inv[None, :]
            y = tl.sum(hs * ct, axis=1)
            if HAS_D:
                y += tl.load(d_ptr + c).to(ACC) * u
            if HAS_Z:
                z = tl.load(z_ptr + bi * sz_b + c * sz_c + pos * sz_l, mask=mask_t, other=0.0).to(ACC)
                y = y * z * _sigmoid(z)
            out_offs = bi * so_b + uc * so_c + pos * so_l
            if CROSS:
                tl.atomic_add(out_ptr + out_offs, y.to(out_ptr.dtype.element_ty), mask=mask_t)
            else:
                tl.store(out_ptr + out_offs, y.to(out_ptr.dtype.element_ty), mask=mask_t)
    if WRITE_OUT:
        if WRITE_LAST:
            tl.store(last_ptr + (bi * n_ch + c) * d_state + offs_n, h, mask=mask_n & (chunk == n_chunks - 1))
    else:
        tl.store(end_ptr + state_row * d_state + offs_n, h, mask=mask_n)
        tl.store(dtsum_ptr + state_row, tl.sum(dt_acc, axis=0))


@triton.jit
def chain_kernel(
    end_ptr, dtsum_ptr, a_ptr, carry_ptr, n_ch, n_chunks, d_state,
    N_PAD: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """One (channel, batch): chain the chunks' summaries ``v -> exp(A·Σdt)·v + end`` in time order (or
    reversed) and write the value entering each chunk (zero for the first one)."""
    c = tl.program_id(0)
    bi = tl.program_id(1).to(tl.int64)
    offs_n = tl.arange(0, N_PAD)
    mask_n = offs_n < d_state
    A = tl.load(a_ptr + c * d_state + offs_n, mask=mask_n, other=0.0).to(ACC)
    row0 = (bi * n_ch + c) * n_chunks
    v = tl.zeros([N_PAD], dtype=ACC)
    for i in range(0, n_chunks):
        if REVERSE:
            j = n_chunks - 1 - i
        else:
            j = i
        tl.store(carry_ptr + (row0 + j) * d_state + offs_n, v, mask=mask_n)
        end = tl.load(end_ptr + (row0 + j) * d_state + offs_n, mask=mask_n, other=0.0)
        v = tl.exp(tl.load(dtsum_ptr + row0 + j) * A) * v + end


@triton.jit
def scan_bwd_chunk_kernel(
    dl_ptr, z_ptr, a_ptr, c_ptr, bias_ptr, g_ptr, lam_ptr, dtsum_ptr,
    length, n_ch, u_channels, dim_per_dir, c_group, height, width, chunk_blocks, n_chunks, d_state,
    sd_b, sd_c, sd_l, sz_b, sz_c, sz_l, sc_b, sc_g, sc_n, sc_l, sg_b, sg_c, sg_l,
    N_PAD: tl.constexpr, BLOCK_T: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, C_VARYING: tl.constexpr, CROSS: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """One (channel, chunk, batch): the adjoint λ at the chunk's first step with zero λ after the chunk,
    and the chunk's shifted Σ dt (steps t+1 for t in the chunk), for the reverse ``chain_kernel``."""
    c = tl.program_id(0)
    chunk = tl.program_id(1)
    bi = tl.program_id(2).to(tl.int64)
    k = c // dim_per_dir
    uc = c % u_channels
    offs_n = tl.arange(0, N_PAD)
    mask_n = offs_n < d_state
    rows = tl.arange(0, BLOCK_T)
    A = tl.load(a_ptr + c * d_state + offs_n, mask=mask_n, other=0.0).to(ACC)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + c).to(ACC)
    dl_base = bi * sd_b + c * sd_c
    c_base = bi * sc_b + (c // c_group) * sc_g
    if not C_VARYING:
        c_inv = tl.load(c_ptr + c_base + offs_n * sc_n, mask=mask_n, other=0.0).to(ACC)
    lam0 = tl.zeros([N_PAD], dtype=ACC)
    shift_acc = tl.zeros([BLOCK_T], dtype=ACC)
    t_start = chunk * chunk_blocks * BLOCK_T
    n_blocks = tl.minimum(chunk_blocks, tl.cdiv(length - t_start, BLOCK_T))
    for j in range(0, n_blocks):
        t = t_start + j * BLOCK_T + rows
        mask_t = t < length
        mask_next = (t + 1) < length
        pos = _positions(t, k, length, height, width, CROSS)
        pos_next = _positions(t + 1, k, length, height, width, CROSS)
        dt_next = _step_sizes(_pre_softplus(dl_ptr, dl_base + pos_next * sd_l, mask_next, bias, HAS_BIAS, ACC),
                              mask_next, SOFTPLUS)  # fmt: skip
        gy = tl.load(g_ptr + bi * sg_b + uc * sg_c + pos * sg_l, mask=mask_t, other=0.0).to(ACC)
        if HAS_Z:
            z = tl.load(z_ptr + bi * sz_b + c * sz_c + pos * sz_l, mask=mask_t, other=0.0).to(ACC)
            gy = gy * z * _sigmoid(z)
        if C_VARYING:
            ct = _load_bc(c_ptr, c_base, pos, sc_n, sc_l, offs_n, mask_t, mask_n, ACC)
        else:
            ct = c_inv[None, :]
        a_next = tl.exp(dt_next[:, None] * A[None, :])
        _, lam = tl.associative_scan((a_next, gy[:, None] * ct), 0, _combine, reverse=True)
        # Decay from the chunk's first step to this block's first step: exp(A · Σ earlier shifted dt).
        lam0 += tl.exp(A * tl.sum(shift_acc, axis=0)) * _row(lam, rows, 0)
        shift_acc += dt_next
    state_row = (bi * n_ch + c) * n_chunks + chunk
    tl.store(lam_ptr + state_row * d_state + offs_n, lam0, mask=mask_n)
    tl.store(dtsum_ptr + state_row, tl.sum(shift_acc, axis=0))


@triton.jit
def scan_bwd_kernel(
    u_ptr, dl_ptr, z_ptr, a_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, g_ptr,
    carry_ptr, lam_carry_ptr, scratch_ptr,
    du_ptr, ddl_ptr, dz_ptr, db_ptr, dc_ptr, da_ptr, dd_ptr, dbias_ptr,
    length, n_ch, u_channels, dim_per_dir, b_group, c_group, height, width, chunk_blocks, n_chunks, d_state,
    su_b, su_c, su_l, sd_b, sd_c, sd_l, sz_b, sz_c, sz_l,
    sb_b, sb_g, sb_n, sb_l, sc_b, sc_g, sc_n, sc_l, sg_b, sg_c, sg_l,
    gb_b, gb_g, gb_n, gb_l, gc_b, gc_g, gc_n, gc_l,
    N_PAD: tl.constexpr, BLOCK_T: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, B_VARYING: tl.constexpr, C_VARYING: tl.constexpr,
    CROSS: tl.constexpr, HAS_CARRY: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """One (channel, chunk, batch): all gradients of the chunk.

    ``du`` (b, u_channels, L), ``ddelta`` (b, n_ch, L) and ``dz`` are contiguous; ``du`` is atomically added
    when CROSS (four directions meet). Varying B/C gradients are atomically added into fp32 (b, G, N, L)
    buffers; time-invariant ones, like dA, dD and d(delta_bias), are per-program partials (b, n_ch, n_chunks, ·).
    """
    c = tl.program_id(0)
    chunk = tl.program_id(1)
    bi = tl.program_id(2).to(tl.int64)
    k = c // dim_per_dir
    uc = c % u_channels
    offs_n = tl.arange(0, N_PAD)
    mask_n = offs_n < d_state
    rows = tl.arange(0, BLOCK_T)
    A = tl.load(a_ptr + c * d_state + offs_n, mask=mask_n, other=0.0).to(ACC)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + c).to(ACC)
    d_val = 0.0
    if HAS_D:
        d_val = tl.load(d_ptr + c).to(ACC)
    u_base = bi * su_b + uc * su_c
    dl_base = bi * sd_b + c * sd_c
    g_base = bi * sg_b + uc * sg_c
    b_base = bi * sb_b + (c // b_group) * sb_g
    c_base = bi * sc_b + (c // c_group) * sc_g
    if not B_VARYING:
        b_inv = tl.load(b_ptr + b_base + offs_n * sb_n, mask=mask_n, other=0.0).to(ACC)
    if not C_VARYING:
        c_inv = tl.load(c_ptr + c_base + offs_n * sc_n, mask=mask_n, other=0.0).to(ACC)
    state_row = (bi * n_ch + c) * n_chunks + chunk
    if HAS_CARRY:
        h = tl.load(carry_ptr + state_row * d_state + offs_n, mask=mask_n, other=0.0).to(ACC)
        lam_next = tl.load(lam_carry_ptr + state_row * d_state + offs_n, mask=mask_n, other=0.0).to(ACC)
    else:
        h = tl.zeros([N_PAD], dtype=ACC)
        lam_next = tl.zeros([N_PAD], dtype=ACC)
    t_start = chunk * chunk_blocks * BLOCK_T
    n_blocks = tl.minimum(chunk_blocks, tl.cdiv(length - t_start, BLOCK_T))
    scratch_row0 = (bi * n_ch + c) * n_chunks * chunk_blocks + chunk * chunk_blocks

    # Pass 1, forward in time: the state entering every block of the chunk, into the scratch buffer.
    for j in range(0, n_blocks):
        tl.store(scratch_ptr + (scratch_row0 + j) * d_state + offs_n, h, mask=mask_n)
        t = t_start + j * BLOCK_T + rows
        mask_t = t < length
        pos = _positions(t, k, length, height, width, CROSS)
        u = tl.load(u_ptr + u_base + pos * su_l, mask=mask_t, other=0.0).to(ACC)
        dt = _step_sizes(_pre_softplus(dl_ptr, dl_base + pos * sd_l, mask_t, bias, HAS_BIAS, ACC), mask_t, SOFTPLUS)
        if B_VARYING:
            bt = _load_bc(b_ptr, b_base, pos, sb_n, sb_l, offs_n, mask_t, mask_n, ACC)
        else:
            bt = b_inv[None, :]
        a_cum, x_cum = tl.associative_scan((tl.exp(dt[:, None] * A[None, :]), (dt * u)[:, None] * bt), 0, _combine)
        h = _row(a_cum * h[None, :] + x_cum, rows, BLOCK_T - 1)
    tl.debug_barrier()  # the scratch rows written above are read back below by other threads

    # Pass 2, backward in time: recompute each block's states, scan λ in reverse, write the gradients.
    da_acc = tl.zeros([N_PAD], dtype=ACC)
    db_acc = tl.zeros([N_PAD], dtype=ACC)
    dc_acc = tl.zeros([N_PAD], dtype=ACC)
    dd_acc = tl.zeros([BLOCK_T], dtype=ACC)
    dbias_acc = tl.zeros([BLOCK_T], dtype=ACC)
    for i in range(0, n_blocks):
        j = n_blocks - 1 - i
        h_in = tl.load(scratch_ptr + (scratch_row0 + j) * d_state + offs_n, mask=mask_n, other=0.0)
        t = t_start + j * BLOCK_T + rows
        mask_t = t < length
        mask_next = (t + 1) < length
        pos = _positions(t, k, length, height, width, CROSS)
        pos_next = _positions(t + 1, k, length, height, width, CROSS)
        u = tl.load(u_ptr + u_base + pos * su_l, mask=mask_t, other=0.0).to(ACC)
        pre = _pre_softplus(dl_ptr, dl_base + pos * sd_l, mask_t, bias, HAS_BIAS, ACC)
        dt = _step_sizes(pre, mask_t, SOFTPLUS)
        dt_next = _step_sizes(_pre_softplus(dl_ptr, dl_base + pos_next * sd_l, mask_next, bias, HAS_BIAS, ACC),
                              mask_next, SOFTPLUS)  # fmt: skip
        if B_VARYING:
            bt = _load_bc(b_ptr, b_base, pos, sb_n, sb_l, offs_n, mask_t, mask_n, ACC)
        else:
            bt = b_inv[None, :]
        if C_VARYING:
            ct = _load_bc(c_ptr, c_base, pos, sc_n, sc_l, offs_n, mask_t, mask_n, ACC)
        else:
            ct = c_inv[None, :]
        x = (dt * u)[:, None] * bt
        a_cum, x_cum = tl.associative_scan((tl.exp(dt[:, None] * A[None, :]), x), 0, _combine)
        hs = a_cum * h_in[None, :] + x_cum
        g = tl.load(g_ptr + g_base + pos * sg_l, mask=mask_t, other=0.0).to(ACC)
        if HAS_Z:
            z = tl.load(z_ptr + bi * sz_b + c * sz_c + pos * sz_l, mask=mask_t, other=0.0).to(ACC)
            sig = _sigmoid(z)
            y = tl.sum(hs * ct, axis=1) + d_val * u
            dz = g * y * sig * (1.0 + z * (1.0 - sig))
            tl.store(dz_ptr + (bi * n_ch + c) * length + pos, dz.to(dz_ptr.dtype.element_ty), mask=mask_t)
            gy = g * z * sig
        else:
            gy = g
        a_next = tl.exp(dt_next[:, None] * A[None, :])
        p_next, lam = tl.associative_scan((a_next, gy[:, None] * ct), 0, _combine, reverse=True)
        lam = lam + p_next * lam_next[None, :]
        lam_next = _row(lam, rows, 0)
        lam_b = tl.sum(lam * bt, axis=1)  # Σ_n λ·B
        lam_ah = lam * (hs - x)  # λ_t · a_t·h_{t-1}, without a division
        ddt = u * lam_b + tl.sum(lam_ah * A[None, :], axis=1)
        da_acc += tl.sum(lam_ah * dt[:, None], axis=0)
        du = dt * lam_b + d_val * gy
        dd_acc += gy * u
        if SOFTPLUS:
            ddt = ddt * _sigmoid(pre)
        ddt = tl.where(mask_t, ddt, 0.0)
        dbias_acc += ddt
        tl.store(ddl_ptr + (bi * n_ch + c) * length + pos, ddt.to(ddl_ptr.dtype.element_ty), mask=mask_t)
        du_offs = du_ptr + (bi * u_channels + uc) * length + pos
        if CROSS:
            tl.atomic_add(du_offs, du.to(du_ptr.dtype.element_ty), mask=mask_t)
        else:
            tl.store(du_offs, du.to(du_ptr.dtype.element_ty), mask=mask_t)
        db = lam * (dt * u)[:, None]
        dc = gy[:, None] * hs
        mask_tn = mask_t[:, None] & mask_n[None, :]
        if B_VARYING:
            db_offs = bi * gb_b + (c // b_group) * gb_g + offs_n[None, :] * gb_n + pos[:, None] * gb_l
            tl.atomic_add(db_ptr + db_offs, db, mask=mask_tn)
        else:
            db_acc += tl.sum(tl.where(mask_tn, db, 0.0), axis=0)
        if C_VARYING:
            dc_offs = bi * gc_b + (c // c_group) * gc_g + offs_n[None, :] * gc_n + pos[:, None] * gc_l
            tl.atomic_add(dc_ptr + dc_offs, dc, mask=mask_tn)
        else:
            dc_acc += tl.sum(tl.where(mask_tn, dc, 0.0), axis=0)
    tl.store(da_ptr + state_row * d_state + offs_n, da_acc, mask=mask_n)
    tl.store(dd_ptr + state_row, tl.sum(dd_acc, axis=0))
    tl.store(dbias_ptr + state_row, tl.sum(dbias_acc, axis=0))
    if not B_VARYING:
        tl.store(db_ptr + state_row * d_state + offs_n, db_acc, mask=mask_n)
    if not C_VARYING:
        tl.store(dc_ptr + state_row * d_state + offs_n, dc_acc, mask=mask_n)
