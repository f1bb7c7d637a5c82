"""SS2D's four-direction scan fused into one CPU call (the cpu_fused numba kernels' cross variants).

The unfused SS2D path materialises the four scan orders of its input (``cross_scan``: a (b, 4, D, L)
copy), scans them and folds the four outputs back (``cross_merge``: more copies), and autograd copies
again on the way back. Here the kernels read the row-major grid directly in each direction's order and
add every direction's output into one row-major result, so none of those copies exist.

Inputs are row-major grids: ``u`` (b, D, L); per-direction step sizes ``delta`` (b, K, D, L) and
``B``/``C`` (b, K, N, L) evaluated at each grid position (the per-pixel projections commute with the
reordering); ``A`` (K*D, N), ``D`` and ``delta_bias`` (K*D,) indexed by ``k * D + d``, as in SS2D.
"""

from __future__ import annotations

from typing import Any

import torch

from cliphaze.ops.scan.base import compute_dtype
from cliphaze.ops.scan.cpu_fused import CHECKPOINT_STEPS, _block_size, _use_fast_exp, get_kernels, step_sizes


class _CrossScanFn(torch.autograd.Function):
    """autograd wrapper of cross_forward_kernel / cross_backward_kernel; ``dt`` are the final step sizes."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        u: torch.Tensor,
        dt: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor,
        height: int,
        width: int,
    ) -> torch.Tensor:
        kernels = get_kernels()
        dtype = compute_dtype(u)
        batch, dim, length = u.shape
        n_state = A.shape[1]
        n_dir = dt.shape[1]
        uf, dtf = (t.detach().to(dtype).contiguous() for t in (u, dt))
        af, df = (t.detach().to(dtype).contiguous() for t in (A, D))
        bf, cf = (t.detach().to(dtype).transpose(-1, -2).contiguous() for t in (B, C))  # (b, K, L, N)
        n_ck = max(1, -(-length // CHECKPOINT_STEPS))
        ckpt = torch.empty((batch, n_dir * dim, n_ck, n_state), dtype=dtype)
        out = torch.zeros((batch, dim, length), dtype=dtype)
        kernels.cross_forward(uf.numpy(), dtf.numpy(), af.numpy(), bf.numpy(), cf.numpy(), df.numpy(),
                              _use_fast_exp(dtype), CHECKPOINT_STEPS, height, width, out.numpy(), ckpt.numpy())  # fmt: skip
        ctx.save_for_backward(uf, dtf, af, bf, cf, df, ckpt)
        ctx.meta = (height, width, kernels)
        ctx.dtypes = tuple(t.dtype for t in (u, dt, A, B, C, D))
        return out.to(u.dtype)

    @staticmethod
    def backward(ctx: Any, gout: torch.Tensor) -> tuple[Any, ...]:
        uf, dtf, af, bf, cf, df, ckpt = ctx.saved_tensors
        height, width, kernels = ctx.meta
        dtype = uf.dtype
        batch, dim, length = uf.shape
        n_dir, n_state = dtf.shape[1], af.shape[1]
        block = _block_size(batch, dim, 1, 1, kernels.num_threads)
        n_blocks = dim // block
        gu = torch.zeros((batch, dim, length), dtype=dtype)
        gdt = torch.empty_like(dtf)
        ga_part = torch.zeros((batch, n_dir * dim, n_state), dtype=dtype)
        gd_part = torch.zeros((batch, n_dir * dim), dtype=dtype)
        gb_part = torch.zeros((batch, n_blocks, n_dir, length, n_state), dtype=dtype)
        gc_part = torch.zeros_like(gb_part)
        gout_f = gout.detach().to(dtype).contiguous()
        kernels.cross_backward(uf.numpy(), dtf.numpy(), af.numpy(), bf.numpy(), cf.numpy(), df.numpy(),
                               _use_fast_exp(dtype), CHECKPOINT_STEPS, height, width, ckpt.numpy(), gout_f.numpy(),
                               block, gu.numpy(), gdt.numpy(), ga_part.numpy(), gd_part.numpy(), gb_part.numpy(),
                               gc_part.numpy())  # fmt: skip
        full = (
            gu,
            gdt,
            ga_part.sum(0),
            gb_part.sum(1).transpose(-1, -2),
            gc_part.sum(1).transpose(-1, -2),
            gd_part.sum(0),
        )
        cast = tuple(g.to(dt) for g, dt in zip(full, ctx.dtypes, strict=True))
        return (*cast, None, None)


def cross_scan_fused(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    delta_bias: torch.Tensor,
    height: int,
    width: int,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """The merged four-direction scan of SS2D on CPU tensors; shapes in the module docstring.

    Returns:
        (b, D, L) row-major: the sum over the four directions of each direction's scan output.

    Raises:
        BackendUnavailable: the numba kernels cannot be built here.
    """
    n_dir, dim = delta.shape[1], delta.shape[2]
    dt = step_sizes(delta, delta_bias, delta_softplus, compute_dtype(u), (n_dir, dim, 1))
    return _CrossScanFn.apply(u, dt, A, B, C, D, height, width)
