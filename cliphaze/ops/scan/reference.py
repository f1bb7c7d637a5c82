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
        a = A.to(dtype)
        b_mat = expand_bc(B.to(dtype), batch, dim, length)  # (b|1, Dm, N, L|1)
        c_mat = expand_bc(C.to(dtype), batch, dim, length)
        uf = u.to(dtype)
        state = u.new_zeros((batch, dim, a.shape[1]), dtype=dtype)
        ys = []
        for t in range(length):
            decay = torch.exp(dt[:, :, t, None] * a)  # (b, Dm, N)
            b_t = b_mat[..., min(t, b_mat.shape[-1] - 1)]
            c_t = c_mat[..., min(t, c_mat.shape[-1] - 1)]
            state = decay * state + (dt[:, :, t] * uf[:, :, t])[..., None] * b_t
            ys.append((state * c_t).sum(-1))
        y = torch.stack(ys, dim=-1)
        out = finish_output(y, u, D, z, u.dtype)
        return (out, state) if return_last_state else out
