"""GPU parity: chunked (and reference) vs mamba_ssm's CUDA kernel, per-dtype tolerances. Needs CUDA."""

from __future__ import annotations

import pytest
import torch
from scan_cases import ScanCase

from cliphaze.ops import available_backends, selective_scan

pytestmark = pytest.mark.gpu

# (input dtype, tolerance on out and grads relative to the largest reference magnitude)
DTYPES = [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)]
CASES = [ScanCase(2, 64, 16, 1024, "grouped", groups=4), ScanCase(1, 32, 16, 257, "shared", use_z=False)]
GRAD_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def _to_cuda(args: dict, dtype: torch.dtype) -> dict:
    """u, delta, B, C, z in ``dtype`` (as SS2D would under autocast); A, D, delta_bias stay fp32, like mamba."""
    moved = {}
    for key, value in args.items():
        if isinstance(value, torch.Tensor):
            keep_fp32 = key in ("A", "D", "delta_bias")
            value = value.detach().to("cuda", torch.float32 if keep_fp32 else dtype).requires_grad_()
        moved[key] = value
    return moved


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach(), expected.detach()  # float() of a grad-requiring tensor warns (torch 2.11)
    return float((actual.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.bc)
@pytest.mark.parametrize(("dtype", "tol"), DTYPES, ids=["fp32", "bf16"])
def test_chunked_matches_mamba_cuda(case: ScanCase, dtype: torch.dtype, tol: float) -> None:
    ok, reason = available_backends("cuda")["mamba_cuda"]
    if not ok:
        pytest.skip(f"mamba_cuda unavailable: {reason}")
    args = _to_cuda(case.make(), dtype)
    names = [k for k in GRAD_NAMES if args[k] is not None]
    leaves = [args[k] for k in names]
    want, want_last = selective_scan(**args, return_last_state=True, backend="mamba_cuda")
    got, got_last = selective_scan(**args, return_last_state=True, backend="chunked")
    assert got.dtype == want.dtype == dtype
    assert _rel_err(got, want) <= tol
    assert _rel_err(got_last, want_last) <= tol
    weight = torch.randn_like(want, dtype=torch.float32)
    want_grads = torch.autograd.grad((want.float() * weight).sum(), leaves)
    got_grads = torch.autograd.grad((got.float() * weight).sum(), leaves)
    for name, g, w in zip(names, got_grads, want_grads, strict=True):
        assert _rel_err(g, w) <= tol, name


def test_auto_uses_a_cuda_backend_and_matches_reference() -> None:
    args = _to_cuda(ScanCase(1, 8, 4, 50).make(), torch.float32)
    out = selective_scan(**args)
    ref = selective_scan(**args, backend="reference")
    assert out.device.type == "cuda"
    assert _rel_err(out, ref) <= 1e-4
