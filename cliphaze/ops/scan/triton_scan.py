"""The ``triton`` selective-scan backend: chunked, work-efficient Triton kernels, forward and backward.

The kernels (:mod:`.triton_kernels`, design in its docstring) are imported, with triton, only when the
backend is first probed. Inputs are read in their own dtype (bf16 under autocast) with their own strides
and accumulated in float32 (float64 for float64 ``u``); out has ``u.dtype``. Memory: the forward keeps
the state entering each chunk (b, Dm, L / chunk, N); the backward adds a scratch of block-start states
(b, Dm, L / block_t, N) and float32 (b, G, N, L) buffers for varying B/C gradients. Nothing of size
(b, Dm, N, L) exists. No host synchronisation: every launch size follows from shapes, so the scan can be
captured in a CUDA graph.

The backend runs on CUDA devices, and on the CPU through Triton's interpreter when ``TRITON_INTERPRET=1``
was set before triton was imported (tests; slow).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from cliphaze.ops.scan.base import (
    GROUPED_NDIM,
    SHARED_NDIM,
    TIME_INVARIANT_NDIM,
    BackendUnavailable,
    ScanResult,
    check_scan_args,
    compute_dtype,
)

INSTALL_HINT = "install triton with: pip install triton (PyTorch's CUDA wheels ship it)"
INTERPRET_ENV = "TRITON_INTERPRET"


@dataclass(frozen=True)
class TritonScanConfig:
    """Launch geometry of the kernels (tests shrink it so that tiny sequences cross blocks and chunks)."""

    # Time steps per associative-scan block; a power of two. A (block_t, N) fp32 tile is 8 values per thread
    # at N = 16 and 4 warps: the backward keeps about a dozen such tiles live, so larger blocks risk spills.
    block_t: int = 64
    # Blocks per chunk (one program's work): chunk = 2048 steps, so the 960x540 stage (L = 129,600, 384
    # channels, batch 1) runs 64 x 384 programs, and the sequential chain over chunks is 64 steps long.
    chunk_blocks: int = 32
    num_warps: int = 4  # warps per program

    def __post_init__(self) -> None:
        if self.block_t < 1 or self.block_t & (self.block_t - 1):
            raise ValueError(f"block_t must be a power of two, got {self.block_t}")
        if self.chunk_blocks < 1:
            raise ValueError(f"chunk_blocks must be positive, got {self.chunk_blocks}")


DEFAULT_CONFIG = TritonScanConfig()


def _interpreting() -> bool:
    return os.environ.get(INTERPRET_ENV) == "1"


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[ModuleType | None, str]:
    """Import triton and the kernels once; (None, reason) when that fails."""
    try:
        kernels = importlib.import_module("cliphaze.ops.scan.triton_kernels")
    except ImportError as exc:
        return None, f"triton does not import ({exc}); {INSTALL_HINT}"
    triton = importlib.import_module("triton")
    return kernels, f"triton {triton.__version__}"


def get_kernels() -> ModuleType:
    """The kernels module; raises BackendUnavailable with the reason when triton is missing."""
    kernels, reason = _probe()
    if kernels is None:
        raise BackendUnavailable(f"scan backend 'triton' is unavailable: {reason}")
    return kernels


def _acc_dtype(dtype: torch.dtype) -> Any:
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def _bc_view(mat: torch.Tensor, dim: int) -> tuple[torch.Tensor, int, bool]:
    """B or C as a 4-d (b|1, G, N, L|1) view without copying, the channels per group, and whether it varies in time."""
    if mat.dim() == TIME_INVARIANT_NDIM:
        return mat[None, :, :, None], 1, False
    if mat.dim() == SHARED_NDIM:
        return mat[:, None], dim, True
    return mat, dim // mat.shape[1], True


def _strides4(t: torch.Tensor) -> tuple[int, ...]:
    """Strides of a (b, G, N, L) view; size-1 dims get stride 0 (they are indexed at 0 or broadcast)."""
    return tuple(0 if size == 1 else stride for size, stride in zip(t.shape, t.stride(), strict=True))


@dataclass(frozen=True)
class _Geometry:
    """Sizes of one launch, all from shapes."""

    batch: int
    n_ch: int  # scanned channels (K·Dm for the four-direction scan)
    u_channels: int  # channels of u / out (Dm)
    dim_per_dir: int  # channels per scan direction (n_ch when not CROSS)
    length: int
    d_state: int
    height: int
    width: int
    n_chunks: int
    cross: bool

    @property
    def n_pad(self) -> int:
        return 1 << max(0, (self.d_state - 1).bit_length())


def _geometry(u: torch.Tensor, n_ch: int, d_state: int, config: TritonScanConfig, hw: tuple[int, int] | None,
              ) -> _Geometry:  # fmt: skip
    batch, u_channels, length = u.shape
    chunk = config.block_t * config.chunk_blocks
    n_chunks = max(1, -(-length // chunk))
    if hw is None:
        return _Geometry(batch, n_ch, n_ch, n_ch, length, d_state, 1, length, n_chunks, False)
    return _Geometry(batch, n_ch, u_channels, u_channels, length, d_state, hw[0], hw[1], n_chunks, True)


def _device_guard(t: torch.Tensor) -> Any:
    """Triton launches on the current CUDA device: make it ``t``'s."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _forward(
    geo: _Geometry, config: TritonScanConfig, u: torch.Tensor, delta: torch.Tensor, z: torch.Tensor | None,
    A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, bias: torch.Tensor | None,
    softplus: bool, want_last: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
    """Run the forward launches. Returns (out, carry-in checkpoints or None for one chunk, last state or None).

    ``A``, ``D``, ``bias`` are contiguous in the compute dtype; the rest keep dtype and strides.
    """
    kernels = get_kernels()
    acc = compute_dtype(u)
    dev = u.device
    b_view, b_group, b_vary = _bc_view(B, geo.n_ch)
    c_view, c_group, c_vary = _bc_view(C, geo.n_ch)
    out_shape = (geo.batch, geo.u_channels, geo.length)
    # Four directions add into one position: an accumulator in the compute dtype, cast once at the end.
    if geo.cross:
        out = torch.zeros(out_shape, dtype=acc, device=dev)
    else:
        out = torch.empty(out_shape, dtype=u.dtype, device=dev)
    last = torch.empty((geo.batch, geo.n_ch, geo.d_state), dtype=acc, device=dev) if want_last else out
    z_arg = z if z is not None else u
    common = dict(
        length=geo.length, n_ch=geo.n_ch, u_channels=geo.u_channels, dim_per_dir=geo.dim_per_dir,
        b_group=b_group, c_group=c_group, height=geo.height, width=geo.width, chunk_blocks=config.chunk_blocks,
        n_chunks=geo.n_chunks, d_state=geo.d_state,
        su_b=u.stride(0), su_c=u.stride(1), su_l=u.stride(2),
        sd_b=delta.stride(0), sd_c=delta.stride(1), sd_l=delta.stride(2),
        sz_b=z_arg.stride(0), sz_c=z_arg.stride(1), sz_l=z_arg.stride(2),
        **dict(zip(("sb_b", "sb_g", "sb_n", "sb_l"), _strides4(b_view), strict=True)),
        **dict(zip(("sc_b", "sc_g", "sc_n", "sc_l"), _strides4(c_view), strict=True)),
        so_b=out.stride(0), so_c=out.stride(1), so_l=out.stride(2),
        N_PAD=geo.n_pad, BLOCK_T=config.block_t, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=bias is not None, SOFTPLUS=softplus, B_VARYING=b_vary, C_VARYING=c_vary, CROSS=geo.cross,
        ACC=_acc_dtype(acc), num_warps=config.num_warps,
    )  # fmt: skip
    tensors = (u, delta, z_arg, A, b_view, c_view, D if D is not None else A, bias if bias is not None else A)
    grid = (geo.n_ch, geo.n_chunks, geo.batch)
    carry = None
    with _device_guard(u):
        if geo.n_chunks > 1:
            states = (geo.batch, geo.n_ch, geo.n_chunks, geo.d_state)
            ends = torch.empty(states, dtype=acc, device=dev)
            dtsum = torch.empty(states[:3], dtype=acc, device=dev)
            carry = torch.empty(states, dtype=acc, device=dev)
            kernels.scan_fwd_kernel[grid](*tensors, out, ends, ends, dtsum, last, **common, HAS_CARRY=False,
                                          WRITE_OUT=False, WRITE_LAST=False)  # fmt: skip
            kernels.chain_kernel[(geo.n_ch, geo.batch)](ends, dtsum, A, carry, geo.n_ch, geo.n_chunks, geo.d_state,
                                                        N_PAD=geo.n_pad, REVERSE=False,
                                                        ACC=_acc_dtype(acc))  # fmt: skip
        kernels.scan_fwd_kernel[grid](*tensors, out, carry if carry is not None else out, out, out, last, **common,
                                      HAS_CARRY=carry is not None, WRITE_OUT=True, WRITE_LAST=want_last)  # fmt: skip
    if geo.cross and out.dtype != u.dtype:
        out = out.to(u.dtype)
    return out, carry, last if want_last else None


def _backward(
    geo: _Geometry, config: TritonScanConfig, gout: torch.Tensor, carry: torch.Tensor | None, u: torch.Tensor,
    delta: torch.Tensor, z: torch.Tensor | None, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, bias: torch.Tensor | None, softplus: bool,
) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """Run the backward launches. Returns (du, ddelta, dz|None, dA, dB, dC, dD, dbias), dtypes of the inputs."""
    kernels = get_kernels()
    acc = compute_dtype(u)
    dev = u.device
    b_view, b_group, b_vary = _bc_view(B, geo.n_ch)
    c_view, c_group, c_vary = _bc_view(C, geo.n_ch)
    states = (geo.batch, geo.n_ch, geo.n_chunks, geo.d_state)
    du_shape = (geo.batch, geo.u_channels, geo.length)
    du = torch.zeros(du_shape, dtype=acc, device=dev) if geo.cross else torch.empty(du_shape, dtype=u.dtype, device=dev)
    ddelta = torch.empty((geo.batch, geo.n_ch, geo.length), dtype=delta.dtype, device=dev)
    dz = torch.empty((geo.batch, geo.n_ch, geo.length), dtype=z.dtype, device=dev) if z is not None else du

    def bc_grad_buffer(view: torch.Tensor, vary: bool) -> torch.Tensor:
        if vary:  # atomically accumulated over the channels of a group
            return torch.zeros((geo.batch, view.shape[1], geo.d_state, geo.length), dtype=acc, device=dev)
        return torch.empty(states, dtype=acc, device=dev)  # per-program partials

    db, dc = bc_grad_buffer(b_view, b_vary), bc_grad_buffer(c_view, c_vary)
    da = torch.empty(states, dtype=acc, device=dev)
    dd = torch.empty(states[:3], dtype=acc, device=dev)
    dbias = torch.empty(states[:3], dtype=acc, device=dev)
    scratch = torch.empty((geo.batch, geo.n_ch, geo.n_chunks * config.chunk_blocks, geo.d_state), dtype=acc, device=dev)
    z_arg = z if z is not None else u
    flags = dict(N_PAD=geo.n_pad, BLOCK_T=config.block_t, HAS_Z=z is not None, HAS_BIAS=bias is not None,
                 SOFTPLUS=softplus, C_VARYING=c_vary, CROSS=geo.cross, ACC=_acc_dtype(acc), num_warps=config.num_warps)
    sizes = dict(length=geo.length, n_ch=geo.n_ch, u_channels=geo.u_channels, dim_per_dir=geo.dim_per_dir,
                 c_group=c_group, height=geo.height, width=geo.width, chunk_blocks=config.chunk_blocks,
                 n_chunks=geo.n_chunks, d_state=geo.d_state)
    strides = dict(
        sd_b=delta.stride(0), sd_c=delta.stride(1), sd_l=delta.stride(2),
        sz_b=z_arg.stride(0), sz_c=z_arg.stride(1), sz_l=z_arg.stride(2),
        **dict(zip(("sc_b", "sc_g", "sc_n", "sc_l"), _strides4(c_view), strict=True)),
        sg_b=gout.stride(0), sg_c=gout.stride(1), sg_l=gout.stride(2),
    )  # fmt: skip
    d_arg = D if D is not None else A
    bias_arg = bias if bias is not None else A
    grid = (geo.n_ch, geo.n_chunks, geo.batch)
    lam_carry = None
    with _device_guard(u):
        if geo.n_chunks > 1:
            lam0 = torch.empty(states, dtype=acc, device=dev)
            shifted = torch.empty(states[:3], dtype=acc, device=dev)
            lam_carry = torch.empty(states, dtype=acc, device=dev)
            kernels.scan_bwd_chunk_kernel[grid](delta, z_arg, A, c_view, bias_arg, gout, lam0, shifted, **sizes,
                                                **strides, **flags)  # fmt: skip
            kernels.chain_kernel[(geo.n_ch, geo.batch)](lam0, shifted, A, lam_carry, geo.n_ch, geo.n_chunks,
                                                        geo.d_state, N_PAD=geo.n_pad, REVERSE=True,
                                                        ACC=_acc_dtype(acc))  # fmt: skip
        kernels.scan_bwd_kernel[grid](
            u, delta, z_arg, A, b_view, c_view, d_arg, bias_arg, gout,
            carry if carry is not None else scratch, lam_carry if lam_carry is not None else scratch, scratch,
            du, ddelta, dz, db, dc, da, dd, dbias, **sizes, b_group=b_group,
            su_b=u.stride(0), su_c=u.stride(1), su_l=u.stride(2),
            **dict(zip(("sb_b", "sb_g", "sb_n", "sb_l"), _strides4(b_view), strict=True)),
            **dict(zip(("gb_b", "gb_g", "gb_n", "gb_l"), db.stride() if b_vary else (0, 0, 0, 0), strict=True)),
            **dict(zip(("gc_b", "gc_g", "gc_n", "gc_l"), dc.stride() if c_vary else (0, 0, 0, 0), strict=True)),
            **strides, **flags, HAS_D=D is not None, B_VARYING=b_vary, HAS_CARRY=carry is not None,
        )  # fmt: skip
    return (
        du.to(u.dtype),
        ddelta,
        dz if z is not None else None,
        da.sum((0, 2)),
        _bc_grad(db, B, b_vary),
        _bc_grad(dc, C, c_vary),
        dd.sum((0, 2)),
        dbias.sum((0, 2)),
    )


def _bc_grad(buf: torch.Tensor, mat: torch.Tensor, vary: bool) -> torch.Tensor:
    """The gradient of B or C in its own layout and dtype from the kernel's buffer."""
    if not vary:
        grad = buf.sum((0, 2))  # (Dm, N)
    elif mat.dim() == SHARED_NDIM:
        grad = buf[:, 0]
    else:
        grad = buf
    return grad.to(mat.dtype)


class _TritonScanFn(torch.autograd.Function):
    """autograd wrapper of the Triton forward and backward; last_state carries no grad (as in mamba_ssm)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None,
        z: torch.Tensor | None,
        delta_bias: torch.Tensor | None,
        softplus: bool,
        config: TritonScanConfig,
        hw: tuple[int, int] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        acc = compute_dtype(u)
        small = [None if t is None else t.detach().to(acc).contiguous() for t in (A, D, delta_bias)]
        geo = _geometry(u, delta.shape[1], A.shape[1], config, hw)
        out, carry, last = _forward(geo, config, u, delta, z, small[0], B, C, small[1], small[2], softplus, hw is None)
        ctx.save_for_backward(u, delta, z, B, C, *small, carry)
        ctx.meta = (geo, config, softplus, tuple(None if t is None else t.dtype for t in (A, D, delta_bias)))
        if last is None:
            last = out.new_empty(0)
        ctx.mark_non_differentiable(last)
        return out, last

    @staticmethod
    def backward(ctx: Any, gout: torch.Tensor, _glast: torch.Tensor | None) -> tuple[Any, ...]:
        u, delta, z, B, C, A, D, bias, carry = ctx.saved_tensors
        geo, config, softplus, small_dtypes = ctx.meta
        du, ddelta, dz, da, db, dc, dd, dbias = _backward(geo, config, gout, carry, u, delta, z, A, B, C, D, bias,
                                                          softplus)  # fmt: skip
        da, dd, dbias = (None if dt is None else g.to(dt) for g, dt in zip((da, dd, dbias), small_dtypes, strict=True))
        return du, ddelta.view(delta.shape), da, db, dc, dd, dz, dbias, None, None, None


class TritonScan:
    """Triton selective scan for CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``)."""

    name = "triton"

    def __init__(self, config: TritonScanConfig = DEFAULT_CONFIG) -> None:
        self.config = config

    def available(self, device: torch.device) -> tuple[bool, str]:
        """CUDA with a working triton import; or the CPU when ``TRITON_INTERPRET=1`` is set (Triton's interpreter)."""
        dev = torch.device(device)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                return False, f"CUDA is not available to torch; {INSTALL_HINT}"
        elif dev.type != "cpu" or not _interpreting():
            return False, f"triton runs on CUDA tensors (or the CPU with {INTERPRET_ENV}=1), got device {dev}"
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
            raise BackendUnavailable(f"scan backend 'triton' is unavailable: {reason}")
        check_scan_args(u, delta, A, B, C, D, z, delta_bias)
        out, last = _TritonScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, self.config, None)
        return (out, last) if return_last_state else out


def cross_scan_triton(
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
    config: TritonScanConfig = DEFAULT_CONFIG,
) -> torch.Tensor:
    """SS2D's merged four-direction scan read in place from the row-major grid (see ``cross_fused``).

    Args:
        u: (b, Dm, L) row-major, L = height·width.
        delta: (b, K, Dm, L) raw step sizes at row-major positions; B, C: (b, K, N, L) likewise.
        A: (K·Dm, N); D, delta_bias: (K·Dm,), indexed by ``k·Dm + d``.

    Returns:
        (b, Dm, L) row-major in u.dtype: the sum of the four directions' outputs.
    """
    batch, n_dir, dim, length = delta.shape
    if height * width != length or u.shape != (batch, dim, length) or B.dim() != GROUPED_NDIM:
        raise ValueError(f"cross scan shapes do not match: u {tuple(u.shape)}, delta {tuple(delta.shape)}, "
                         f"B {tuple(B.shape)}, grid {height}x{width}")  # fmt: skip
    ok, reason = TritonScan(config).available(u.device)
    if not ok:
        raise BackendUnavailable(f"scan backend 'triton' is unavailable: {reason}")
    out, _ = _TritonScanFn.apply(u, delta.reshape(batch, n_dir * dim, length), A, B, C, D, None, delta_bias,
                                 delta_softplus, config, (height, width))  # fmt: skip
    return out
