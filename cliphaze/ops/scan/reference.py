"""Sequential selective scan in plain PyTorch: the numerical ground truth (a port of mamba's selective_scan_ref).

One Python iteration per time step, so it is slow; every other backend is tested against it.
"""

from __future__ import annotations

import torch

from cliphaze.ops.scan.base import (
    ScanResult,
    check_scan_args,
    compute_dtype,
    effective_delta,
    expand_bc,
    finish_output,
)


class ReferenceScan:
    """The sequential loop; runs on any device and is differentiable through autograd."""

    name = "reference"

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
        """See ``cliphaze.ops.scan.base`` for shapes. The last state (b, Dm, N) carries grad here."""
        check_scan_args(u, delta, A, B, C, D, z, delta_bias)
        dtype = compute_dtype(u)
        batch, dim, length = u.shape
        dt = effective_delta(delta, delta_bias, delta_softplus, dtype)  # (b, Dm, L)
        # As mamba's selective_scan_ref: precompute the per-step decay and input terms as (b, Dm, L, N),
        # then one recurrence step per time step (slices along N are contiguous).
        delta_a = torch.exp(dt[..., None] * A.to(dtype)[:, None, :])  # (b, Dm, L, N)
        b_mat = expand_bc(B.to(dtype), batch, dim, length).transpose(-1, -2)  # (b|1, Dm, L|1, N)
        c_mat = expand_bc(C.to(dtype), batch, dim, length).transpose(-1, -2).contiguous()
        delta_b_u = (dt * u.to(dtype))[..., None] * b_mat  # (b, Dm, L, N)
        state = u.new_zeros((batch, dim, A.shape[1]), dtype=dtype)
        ys = []
        for t in range(length):
            state = delta_a[:, :, t] * state + delta_b_u[:, :, t]
            ys.append((state * c_mat[:, :, min(t, c_mat.shape[2] - 1)]).sum(-1))
        y = torch.stack(ys, dim=-1)
        out = finish_output(y, u, D, z, u.dtype)
        return (out, state) if return_last_state else out
