"""cpu_fused's float32 polynomial exp: the decays exp(dt * A) over the whole float32 range, through the scan."""

from __future__ import annotations

import torch

from cliphaze.ops import selective_scan

REL_TOL = 1e-5  # the polynomial exp is within a few ulp; the sums are reassociated


def test_float32_scan_matches_float64_over_the_exp_range() -> None:
    """A from -1e3 (decays underflow) to small growth rates, dt up to 5: x = dt * A spans about [-5000, 0.1]."""
    gen = torch.Generator().manual_seed(3)
    dim, n_state, length = 8, 32, 70  # 70 steps: crosses a 64-step chunk
    a = torch.cat([-torch.logspace(-3, 3, n_state - 4), torch.tensor([0.0, 0.005, 0.01, 0.02])]).repeat(dim, 1)
    delta = torch.rand(1, dim, length, generator=gen) * 5.0
    u = torch.randn(1, dim, length, generator=gen)
    b = torch.randn(1, n_state, length, generator=gen)
    c = torch.randn(1, n_state, length, generator=gen)
    out32 = selective_scan(u, delta, a, b, c, backend="cpu_fused")
    out64 = selective_scan(u.double(), delta.double(), a.double(), b.double(), c.double(), backend="reference")
    assert torch.isfinite(out32).all()
    err = ((out32.double() - out64).abs().max() / out64.abs().max()).item()
    assert err < REL_TOL, err


def test_nan_still_propagates() -> None:
    """fastmath is reassoc/contract only: a NaN step size gives NaN outputs, not garbage numbers."""
    u = torch.ones(1, 2, 5)
    delta = torch.full((1, 2, 5), 0.1)
    delta[0, 0, 2] = float("nan")
    a = -torch.ones(2, 4)
    b = torch.ones(1, 4, 5)
    out = selective_scan(u, delta, a, b, b, backend="cpu_fused")
    assert torch.isnan(out[0, 0, 2:]).all() and torch.isfinite(out[0, 1]).all() and torch.isfinite(out[0, 0, :2]).all()
