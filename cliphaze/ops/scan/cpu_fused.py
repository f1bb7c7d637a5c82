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

The kernels are in :mod:`cliphaze.ops.scan.cpu_kernels`, imported (with numba) only when the backend is
first probed (the first CPU scan), and compiled with ``cache=True`` so later processes load the machine
code from disk (about 1 s instead of about 40 s). No numba, or a compile failure, makes the backend
unavailable with the reason; it never crashes the import.
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
from cliphaze.user_cache import import_numba

logger = logging.getLogger(__name__)

# Time steps between saved states; the backward recomputes at most this many states per chunk.
CHECKPOINT_STEPS = 64
# The backward aims for at least this many parallel jobs per numba thread (load balance).
JOBS_PER_THREAD = 4
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


def _build_kernels(started: float) -> FusedKernels:
    """Load (or compile) the kernels and run them once on tiny inputs so compile errors surface here."""
    import numba

    from cliphaze.ops.scan import cpu_kernels

    kernels = FusedKernels(cpu_kernels.forward_kernel, cpu_kernels.backward_kernel, cpu_kernels.cross_forward_kernel,
                           cpu_kernels.cross_backward_kernel, numba.get_num_threads(), 0.0)  # build_s set below
    for dtype in (np.float32, np.float64):
        _run_tiny(kernels, dtype)
    return FusedKernels(kernels.forward, kernels.backward, kernels.cross_forward, kernels.cross_backward,
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
        import_numba()
        from numba.core.errors import NumbaError
    except ImportError as exc:
        return None, f"numba does not import ({exc}); {INSTALL_HINT}"
    try:
        kernels = _build_kernels(started)
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
