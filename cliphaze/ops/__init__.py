"""Numerical ops of the CLIPHaze network: the selective scan (several backends) and the SS2D cross-scan.

``selective_scan`` has exactly ``mamba_ssm.selective_scan_fn``'s arguments, shapes and semantics
(spec section 5.5). Importing this package loads neither numba (until a CPU scan runs) nor mamba_ssm
or triton.
"""

from __future__ import annotations

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
]


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
