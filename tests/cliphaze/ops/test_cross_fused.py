"""The fused four-direction SS2D scan equals cross_scan -> selective_scan -> cross_merge, values and gradients."""

from __future__ import annotations

import pytest
import torch

from cliphaze.ops import cross_merge, cross_scan, cross_selective_scan, selective_scan, to_scan_order
from cliphaze.ops.scan.cross_fused import cross_scan_fused

K = 4


def _inputs(dtype: torch.dtype, b: int = 2, d: int = 3, n: int = 4, h: int = 9, w: int = 11, seed: int = 0):
    """x (b, d, h, w); delta (b, K, d, L); A (K*d, n); B, C (b, K, n, L); D, bias (K*d,), all leaf tensors."""
    g = torch.Generator().manual_seed(seed)
    length = h * w
    tensors = [
        torch.randn(b, d, h, w, generator=g, dtype=dtype),
        torch.randn(b, K, d, length, generator=g, dtype=dtype) * 0.5,
        -torch.rand(K * d, n, generator=g, dtype=dtype) * 2 - 0.1,
        torch.randn(b, K, n, length, generator=g, dtype=dtype),
        torch.randn(b, K, n, length, generator=g, dtype=dtype),
        torch.randn(K * d, generator=g, dtype=dtype),
        torch.randn(K * d, generator=g, dtype=dtype) * 0.5,
    ]
    return [t.requires_grad_() for t in tensors]


def _unfused(x, delta, A, B, C, D, bias, backend):
    b, d, h, w = x.shape
    length = h * w
    ys = selective_scan(cross_scan(x).reshape(b, K * d, length), to_scan_order(delta, h, w).reshape(b, K * d, length),
                        A, to_scan_order(B, h, w), to_scan_order(C, h, w), D=D, delta_bias=bias,
                        delta_softplus=True, backend=backend)  # fmt: skip
    return cross_merge(ys.view(b, K, d, length), h, w)


def _fused(x, delta, A, B, C, D, bias):
    b, d, h, w = x.shape
    return cross_scan_fused(x.reshape(b, d, h * w), delta, A, B, C, D, bias, h, w, True)


def _values_and_grads(fn, inputs, weight):
    out = fn(*inputs)
    (out * weight).sum().backward()
    grads = [t.grad.clone() for t in inputs]
    for t in inputs:
        t.grad = None
    return out.detach(), grads


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 2e-4)])
@pytest.mark.parametrize("hw", [(9, 11), (1, 7), (13, 1)])
def test_fused_cross_scan_matches_the_unfused_path(dtype: torch.dtype, tol: float, hw: tuple[int, int]) -> None:
    inputs = _inputs(dtype, h=hw[0], w=hw[1])
    weight = torch.randn(2, 3, hw[0] * hw[1], generator=torch.Generator().manual_seed(1), dtype=dtype)
    ref_out, ref_grads = _values_and_grads(lambda *t: _unfused(*t, backend="reference"), inputs, weight)
    out, grads = _values_and_grads(_fused, inputs, weight)
    torch.testing.assert_close(out, ref_out, atol=tol, rtol=tol)
    names = ("x", "delta", "A", "B", "C", "D", "delta_bias")
    for name, g, ref in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(g, ref, atol=tol * 10, rtol=tol * 10, msg=lambda m, name=name: f"grad {name}: {m}")


def test_fused_cross_scan_passes_gradcheck() -> None:
    inputs = _inputs(torch.float64, b=1, d=2, n=3, h=3, w=4, seed=2)
    assert torch.autograd.gradcheck(_fused, inputs, eps=1e-6, atol=1e-6)


def test_dispatch_uses_the_fused_kernels_on_cpu_fused_and_copies_elsewhere() -> None:
    inputs = [t.detach() for t in _inputs(torch.float32)]
    fused = cross_selective_scan(*inputs, backend="cpu_fused")
    chunked = cross_selective_scan(*inputs, backend="chunked")
    torch.testing.assert_close(fused, _fused(*inputs), atol=0, rtol=0)
    torch.testing.assert_close(chunked, _unfused(*inputs, backend="chunked"), atol=0, rtol=0)
    torch.testing.assert_close(fused, chunked, atol=2e-4, rtol=2e-4)


def test_to_scan_order_matches_cross_scan() -> None:
    x = torch.randn(2, 5, 3, 4)
    per_direction = x.reshape(2, 1, 5, 12).expand(2, K, 5, 12)
    assert torch.equal(to_scan_order(per_direction, 3, 4), cross_scan(x))
