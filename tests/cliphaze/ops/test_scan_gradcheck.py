"""torch.autograd.gradcheck of the differentiable fast backends in float64 on tiny problems."""

from __future__ import annotations

import pytest
import torch
from scan_cases import ScanCase

from cliphaze.ops import selective_scan

GRAD_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
CASES = [
    ScanCase(2, 4, 3, 7, "grouped", groups=2),
    ScanCase(1, 3, 2, 5, "invariant"),
    ScanCase(2, 2, 2, 6, "shared", use_z=False, use_bias=False, softplus=False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.bc)
@pytest.mark.parametrize("backend", ["chunked", "cpu_fused"])
def test_gradcheck_float64(backend: str, case: ScanCase) -> None:
    args = case.make(dtype=torch.float64, seed=5)
    names = [k for k in GRAD_NAMES if args[k] is not None]

    def fn(*leaves: torch.Tensor) -> torch.Tensor:
        return selective_scan(**{**args, **dict(zip(names, leaves, strict=True))}, backend=backend)

    assert torch.autograd.gradcheck(fn, [args[k] for k in names], eps=1e-6, atol=1e-6, rtol=1e-5)
