"""Numerical ops of the CLIPHaze network: the selective scan (several backends) and the SS2D cross-scan.

``selective_scan`` has exactly ``mamba_ssm.selective_scan_fn``'s arguments, shapes and semantics
(spec section 5.5). Importing this package loads neither numba (until a CPU scan runs) nor mamba_ssm
or triton.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cliphaze.ops.cross_scan import cross_merge, cross_scan
from cliphaze.ops.scan import (
    AUTO,
    BackendUnavailable,
    ScanBackend,
    ScanError,
    ScanShapeError,
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
    "available_backends",
    "cross_merge",
    "cross_scan",
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
        backend: ``"auto"``, ``"reference"``, ``"chunked"``, ``"cpu_fused"`` or ``"mamba_cuda"``.

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
