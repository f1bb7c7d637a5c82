"""Numerical ops of the CLIPHaze network: the selective scan (several backends) and the SS2D cross-scan.

``selective_scan`` has exactly ``mamba_ssm.selective_scan_fn``'s arguments, shapes and semantics
(spec section 5.5). Importing this package loads neither numba (until a CPU scan runs) nor mamba_ssm
or triton.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cliphaze.ops.cross_scan import NUM_DIRECTIONS, cross_merge, cross_scan, to_scan_order
from cliphaze.ops.scan import (
    AUTO,
    BackendUnavailable,
    ScanBackend,
    ScanError,
    ScanShapeError,
    ScanTooLarge,
    available_backends,
    get_scan_backend,
    resolve_backend,
)
from cliphaze.ops.scan.base import ScanResult

__all__ = [
    "BackendUnavailable",
    "ScanBackend",
    "ScanError",
    "ScanShapeError",
    "ScanTooLarge",
    "available_backends",
    "cross_merge",
    "cross_scan",
    "cross_selective_scan",
    "get_scan_backend",
    "resolve_backend",
    "selective_scan",
    "selective_scan_outside_graph",
]

# selective_scan wrapped by torch.compiler.disable, built on first request (importing dynamo costs seconds,
# so plain imports never build it). A one-slot list, not functools.cache: dynamo reads it while tracing and
# warns about tracing through cache wrappers.
_OUTSIDE_GRAPH: list[Callable[..., ScanResult]] = []


def selective_scan(
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
    backend: str = AUTO,
) -> ScanResult:
    """The S6 selective scan, ``mamba_ssm.selective_scan_fn`` semantics.

    Maths runs in float32 (float64 for float64 ``u``); the output has ``u.dtype``.

    Args:
        u: input (b, Dm, L).
        delta: raw step sizes (b, Dm, L), before ``delta_bias`` and softplus.
        A: state matrix diagonal (Dm, N), real (SS2D passes ``-exp(A_log)``).
        B: input matrix (Dm, N), (b, N, L) or grouped (b, G, N, L); channel d uses group d // (Dm // G).
        C: output matrix, same layouts as ``B``.
        D: skip gain (Dm,) or None.
        z: gate (b, Dm, L) or None; ``out *= SiLU(z)``.
        delta_bias: (Dm,) added to ``delta`` before softplus, or None.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state (b, Dm, N).
        backend: ``"auto"``, ``"reference"``, ``"chunked"``, ``"cpu_fused"``, ``"mamba_cuda"`` or ``"triton"``.

    Returns:
        out (b, Dm, L), or (out, last_state) when ``return_last_state``.

    Raises:
        BackendUnavailable: a named backend cannot run on ``u``'s device (message has the install command).
        ScanShapeError: the shapes are not mamba_ssm's.
        ValueError: unknown backend name.
    """
    name = resolve_backend(backend, u.device)
    return get_scan_backend(name).scan(
        u,
        delta,
        A,
        B,
        C,
        D=D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )


def selective_scan_outside_graph() -> Callable[..., ScanResult]:
    """``selective_scan`` excluded from ``torch.compile`` graphs (same arguments and result).

    The scan kernels (numba, mamba_ssm's CUDA extension) cannot be traced; dynamo would break the graph
    inside the backend's Python code (and warn). Compiled networks call this wrapper instead: one clean
    graph break around the scan, the rest of the network compiled.
    """
    if not _OUTSIDE_GRAPH:
        _OUTSIDE_GRAPH.append(torch.compiler.disable(selective_scan, recursive=True))
    return _OUTSIDE_GRAPH[0]


def cross_selective_scan(
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    delta_bias: torch.Tensor,
    delta_softplus: bool = True,
    backend: str = AUTO,
    outside_graph: bool = False,
    fuse: bool = True,
) -> torch.Tensor:
    """SS2D's scan: the four directions of a grid scanned and summed back, ``cross_merge(scan(cross_scan(x)))``.

    On the ``cpu_fused`` and ``triton`` backends the four scans run in one fused call that reads the grid in
    place and adds the four outputs into one row-major result (:mod:`cliphaze.ops.scan.cross_fused`,
    :func:`cliphaze.ops.scan.triton_scan.cross_scan_triton`); other backends get the explicit cross-scan copies.

    Args:
        x: (b, Dm, H, W) scan input.
        delta: (b, 4, Dm, H·W) raw step sizes of each direction at row-major grid positions.
        A: (4·Dm, N); B, C: (b, 4, N, H·W) at row-major positions; D, delta_bias: (4·Dm,).
        backend: selective-scan backend name (``"auto"`` resolves per device).
        outside_graph: under torch.compile: the unfused path with the scan kept out of the graph.
        fuse: use the fused call where the backend has one (False: always the explicit copies; benchmarks).

    Returns:
        (b, Dm, H·W) row-major.
    """
    batch, dim, height, width = x.shape
    length = height * width
    resolved = resolve_backend(backend, x.device) if fuse and not outside_graph else None
    if resolved == "cpu_fused":
        from cliphaze.ops.scan.cross_fused import cross_scan_fused

        return cross_scan_fused(x.reshape(batch, dim, length), delta, A, B, C, D, delta_bias, height, width,
                                delta_softplus)  # fmt: skip
    if resolved == "triton":
        from cliphaze.ops.scan.triton_scan import cross_scan_triton

        return cross_scan_triton(x.reshape(batch, dim, length), delta, A, B, C, D, delta_bias, height, width,
                                 delta_softplus)  # fmt: skip
    scan = selective_scan_outside_graph() if outside_graph else selective_scan
    k = NUM_DIRECTIONS
    ys = scan(
        cross_scan(x).reshape(batch, k * dim, length),
        to_scan_order(delta, height, width).reshape(batch, k * dim, length),
        A,
        to_scan_order(B, height, width),
        to_scan_order(C, height, width),
        D=D,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        backend=backend,
    )
    return cross_merge(ys.view(batch, k, dim, length), height, width)
