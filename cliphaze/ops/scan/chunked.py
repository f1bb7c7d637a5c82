"""Vectorized selective scan in pure PyTorch: chunks solved in closed form with cumulative sums.

Within a chunk of ``T`` steps, with the cumulative log-decay ``S_t = Σ_{τ≤t} Δ_τ·A`` (≤ 0),
``h_t = e^{S_t}·(Σ_{τ≤t} e^{−S_τ}·Δ_τ·B_τ·u_τ)``; the chunk-end states then form a shorter linear
recurrence of the same kind, solved by the same function (recursion depth about log_T(L)), and each
chunk adds ``e^{S_t}`` times the state carried in. ``T`` is picked per call so that ``|S|`` stays below
``MAX_LOG_SPAN`` inside a chunk: ``e^{−S}`` then never overflows, whatever ``delta`` and ``A`` are.
Per-step decays below ``e^{−MAX_LOG_SPAN/2}`` are clamped there (they zero the state to far below
float32 resolution either way). Runs on any device and is differentiable through autograd; it
materialises (b, Dm, N, L) tensors, so it is memory-bound on CPU, and on CUDA it refuses (``ScanTooLarge``)
a problem whose working set cannot fit in the device's free memory, before allocating any of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cliphaze.ops.scan.base import (
    ScanResult,
    ScanTooLarge,
    check_scan_args,
    compute_dtype,
    effective_delta,
    expand_bc,
    finish_output,
)

# Largest |cumulative log-decay| inside one chunk; e^64 ≈ 6e27 keeps T·e^64·|x| far below float32's 3e38.
MAX_LOG_SPAN = 64.0
# Longest chunk; longer chunks lose float32 precision in S (absolute error grows with |S|).
MAX_CHUNK = 64
# Shortest chunk; two halves the sequence per recursion level at worst.
MIN_CHUNK = 2
# (b, Dm, N, L) float32 tensors alive at once in the forward (log-decay, input, cumulative sum, exponentials):
# a lower bound of the working set, so a refused size would certainly not have fitted.
WORKING_SET_COPIES = 4
_GIB = 2**30


def check_fits_in_memory(batch: int, dim: int, d_state: int, length: int, free_bytes: int) -> None:
    """Raise ScanTooLarge when the (b, Dm, N, L) working set of the scan exceeds ``free_bytes``.

    The estimate uses shapes only: ``WORKING_SET_COPIES`` float32 tensors of (b, Dm, N, L).
    """
    need = WORKING_SET_COPIES * batch * dim * d_state * length * 4
    if need > free_bytes:
        raise ScanTooLarge(
            f"scan backend 'chunked' needs about {need / _GIB:.1f} GiB for its (b, D, N, L) = "
            f"({batch}, {dim}, {d_state}, {length}) float32 states but the device has {free_bytes / _GIB:.1f} GiB "
            "free; use backend 'triton' (or 'auto')"
        )


def _free_cuda_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device, counting what PyTorch's caching allocator holds unused."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def _chunk_length(log_decay: torch.Tensor) -> int:
    """Largest power of two T in [MIN_CHUNK, MAX_CHUNK] with T·max|log_decay| ≤ MAX_LOG_SPAN."""
    worst = float(log_decay.detach().abs().max()) if log_decay.numel() else 0.0
    chunk = MAX_CHUNK
    while chunk > MIN_CHUNK and chunk * worst > MAX_LOG_SPAN:
        chunk //= 2
    return chunk


def linear_scan(log_decay: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Solve ``h_t = exp(log_decay_t)·h_{t−1} + x_t`` with ``h_{−1} = 0`` along the last dim.

    Args:
        log_decay: (..., L), values ≤ 0.
        x: (..., L), broadcastable with ``log_decay``.

    Returns:
        h: (..., L) in the broadcast shape.
    """
    log_decay, x = torch.broadcast_tensors(log_decay, x)
    length = x.shape[-1]
    if length == 0:
        return x.clone()
    log_decay = log_decay.clamp(min=-MAX_LOG_SPAN / MIN_CHUNK)
    chunk = _chunk_length(log_decay)
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    if pad:
        # Padding at the end with zero input and no decay leaves every real position unchanged.
        log_decay = F.pad(log_decay, (0, pad))
        x = F.pad(x, (0, pad))
    lead = x.shape[:-1]
    log_decay = log_decay.reshape(*lead, n_chunks, chunk)
    x = x.reshape(*lead, n_chunks, chunk)
    cum = torch.cumsum(log_decay, dim=-1)  # S_t within each chunk, in [-MAX_LOG_SPAN, 0]
    h = torch.exp(cum) * torch.cumsum(torch.exp(-cum) * x, dim=-1)
    if n_chunks > 1:
        # States at chunk ends, chained across chunks: the same recurrence, T times shorter.
        ends = linear_scan(cum[..., -1], h[..., -1])
        carry_in = F.pad(ends[..., :-1], (1, 0))  # state entering each chunk; zero for the first
        h = h + torch.exp(cum) * carry_in[..., None]
    return h.reshape(*lead, n_chunks * chunk)[..., :length]


class ChunkedScan:
    """Chunked closed-form scan; the fallback on every device."""

    name = "chunked"

    def available(self, device: torch.device) -> tuple[bool, str]:
        """Always available."""
        return True, "pure PyTorch"

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
        """See ``cliphaze.ops.scan.base`` for shapes. The last state (b, Dm, N) carries grad here.

        Raises:
            ScanTooLarge: on CUDA, the (b, Dm, N, L) working set exceeds the device's free memory.
        """
        check_scan_args(u, delta, A, B, C, D, z, delta_bias)
        dtype = compute_dtype(u)
        batch, dim, length = u.shape
        if u.device.type == "cuda":
            check_fits_in_memory(batch, dim, A.shape[1], length, _free_cuda_bytes(u.device))
        dt = effective_delta(delta, delta_bias, delta_softplus, dtype)  # (b, Dm, L)
        b_mat = expand_bc(B.to(dtype), batch, dim, length)  # (b|1, Dm, N, L|1)
        c_mat = expand_bc(C.to(dtype), batch, dim, length)
        log_decay = dt[:, :, None, :] * A.to(dtype)[None, :, :, None]  # (b, Dm, N, L)
        x = (dt * u.to(dtype))[:, :, None, :] * b_mat  # (b, Dm, N, L)
        h = linear_scan(log_decay, x)
        y = (h * c_mat).sum(dim=2)  # (b, Dm, L)
        out = finish_output(y, u, D, z, u.dtype)
        if return_last_state:
            return out, h[..., -1]
        return out
