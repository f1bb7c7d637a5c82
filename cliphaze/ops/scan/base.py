"""What every selective-scan backend shares: the protocol, the error types and the argument checks.

Shapes follow ``mamba_ssm.selective_scan_fn`` (spec section 5.5), with ``Dm`` the channel count:

* ``u``, ``delta``, ``z``: (b, Dm, L)
* ``A``: (Dm, N), real
* ``B``, ``C``: (Dm, N) time-invariant, (b, N, L) shared by all channels, or grouped (b, G, N, L)
  where channel ``d`` uses group ``d // (Dm // G)``
* ``D``, ``delta_bias``: (Dm,)
"""

from __future__ import annotations

from typing import Protocol

import torch

# Number of dimensions a time-invariant B/C has: (Dm, N).
TIME_INVARIANT_NDIM = 2
# Number of dimensions of B/C shared by every channel: (b, N, L).
SHARED_NDIM = 3
# Number of dimensions of grouped B/C: (b, G, N, L).
GROUPED_NDIM = 4

ScanResult = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class ScanError(Exception):
    """Base class of the selective-scan errors."""


class BackendUnavailable(ScanError, RuntimeError):
    """A scan backend was asked for by name but cannot run here; the message says how to install it."""


class ScanTooLarge(ScanError, RuntimeError):
    """A backend refuses a problem whose working set cannot fit in the device's free memory."""


class ScanShapeError(ScanError, ValueError):
    """The scan arguments do not have mamba_ssm's shapes."""


class ScanBackend(Protocol):
    """One implementation of the selective scan.

    Attributes:
        name: key of the backend in the table (``"reference"``, ``"chunked"``, ...).
    """

    name: str

    def available(self, device: torch.device) -> tuple[bool, str]:
        """Whether the backend can run on tensors of ``device``; the reason (with an install hint) if not."""
        ...

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
        """Run the scan; see the module docstring for shapes. Returns out (b, Dm, L) in u.dtype, and the
        last state (b, Dm, N) in the compute dtype when ``return_last_state``."""
        ...


def compute_dtype(u: torch.Tensor) -> torch.dtype:
    """The dtype the maths runs in: float64 for float64 input (so gradcheck works), float32 otherwise."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def check_scan_args(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
) -> None:
    """Raise ScanShapeError unless the arguments have mamba_ssm's shapes (module docstring)."""
    if u.dim() != 3:
        raise ScanShapeError(f"u must be (b, D, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ScanShapeError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ScanShapeError(f"A must be (D={dim}, N), got shape {tuple(A.shape)}")
    if A.is_complex():
        raise ScanShapeError("complex A is not supported; pass a real (D, N) tensor")
    d_state = A.shape[1]
    for name, mat in (("B", B), ("C", C)):
        if mat.dim() == TIME_INVARIANT_NDIM:
            expected: tuple[int, ...] = (dim, d_state)
        elif mat.dim() == SHARED_NDIM:
            expected = (batch, d_state, length)
        elif mat.dim() == GROUPED_NDIM:
            groups = mat.shape[1]
            if groups < 1 or dim % groups != 0:
                raise ScanShapeError(f"{name} has {groups} groups, which does not divide D={dim}")
            expected = (batch, groups, d_state, length)
        else:
            raise ScanShapeError(f"{name} must be (D, N), (b, N, L) or (b, G, N, L), got {tuple(mat.shape)}")
        if tuple(mat.shape) != expected:
            raise ScanShapeError(f"{name} must have shape {expected}, got {tuple(mat.shape)}")
        if mat.is_complex():
            raise ScanShapeError(f"complex {name} is not supported")
    for name, vec in (("D", D), ("delta_bias", delta_bias)):
        if vec is not None and tuple(vec.shape) != (dim,):
            raise ScanShapeError(f"{name} must be ({dim},), got shape {tuple(vec.shape)}")
    if z is not None and z.shape != u.shape:
        raise ScanShapeError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def expand_bc(mat: torch.Tensor, batch: int, dim: int, length: int) -> torch.Tensor:
    """View B or C as (b or 1, Dm, N, L or 1) by broadcasting, without copying.

    Args:
        mat: B or C in any of the accepted layouts (module docstring).
        batch: b.
        dim: Dm.
        length: L.

    Returns:
        A broadcastable view: (1, Dm, N, 1) for time-invariant input, (b, Dm, N, L) otherwise.
    """
    if mat.dim() == TIME_INVARIANT_NDIM:
        return mat[None, :, :, None]
    if mat.dim() == SHARED_NDIM:
        return mat[:, None, :, :].expand(batch, dim, mat.shape[1], length)
    groups = mat.shape[1]
    per_group = dim // groups
    return mat[:, :, None].expand(batch, groups, per_group, mat.shape[2], length).reshape(
        batch, dim, mat.shape[2], length
    )


def effective_delta(
    delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool, dtype: torch.dtype
) -> torch.Tensor:
    """Δ = softplus(delta + delta_bias) (or without softplus), in ``dtype``; shape (b, Dm, L)."""
    out = delta.to(dtype)
    if delta_bias is not None:
        out = out + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        out = torch.nn.functional.softplus(out)
    return out


def finish_output(
    y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None, out_dtype: torch.dtype
) -> torch.Tensor:
    """Add the skip term D·u, apply the SiLU(z) gate and cast to ``out_dtype``; all (b, Dm, L)."""
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * u.to(y.dtype)
    if z is not None:
        y = y * torch.nn.functional.silu(z.to(y.dtype))
    return y.to(out_dtype)
