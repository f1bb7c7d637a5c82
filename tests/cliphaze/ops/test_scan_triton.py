"""The ``triton`` scan backend against the sequential reference: forward, backward, the four-direction entry.

Without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by a module fixture
before the kernels are first imported), which is slow: the problems are tiny, and small blocks and
chunks make them cross several blocks and chunks. With CUDA the same tests run the compiled kernels.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest
import torch
from scan_cases import ScanCase, spec_vector

from cliphaze.config import SSMConfig
from cliphaze.layers import ss2d as ss2d_module
from cliphaze.layers.ss2d import SS2D
from cliphaze.ops import cross_merge, cross_scan, cross_selective_scan, resolve_backend, selective_scan, to_scan_order
from cliphaze.ops.scan.triton_scan import TritonScan, TritonScanConfig, cross_scan_triton

# Skipped without triton; found without importing it (the interpreter switch must precede its first use).
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

REL_TOL = 1e-4
GRAD_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
# 4-step blocks, 2 blocks per chunk: an 8-step chunk, so L = 21 has three chunks, one of them partial.
TINY = TritonScanConfig(block_t=4, chunk_blocks=2)

CASES = [
    ScanCase(2, 4, 4, 21, "grouped", groups=2),
    ScanCase(1, 4, 3, 1, "grouped", groups=4),  # L = 1
    ScanCase(1, 3, 5, 19, "grouped", groups=3),  # N not a power of two
    ScanCase(2, 2, 4, 13, "shared"),
    ScanCase(1, 2, 16, 10, "invariant"),
    ScanCase(2, 2, 2, 9, "grouped", groups=1, use_d=False, use_z=False, use_bias=False, softplus=False),
    ScanCase(1, 3, 3, 12, "shared", use_z=False, softplus=True, use_bias=False),
    ScanCase(3, 2, 4, 9, "invariant", use_d=False, use_bias=True, softplus=False),
]


@pytest.fixture(scope="module", autouse=True)
def device() -> Iterator[str]:
    """cuda when present (real Triton); otherwise the CPU with Triton's interpreter switched on."""
    if torch.cuda.is_available():
        yield "cuda"
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1")
        yield "cpu"


def _on(args: dict, device: str) -> dict:
    return {k: v.detach().to(device).requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in args.items()}


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str, tol: float = REL_TOL) -> None:
    scale = expected.detach().abs().max().clamp_min(1e-30)
    err = float((actual.detach().double() - expected.detach().double()).abs().max() / scale)
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol}"


def _check_against_reference(case: ScanCase, device: str, config: TritonScanConfig = TINY,
                             dtype: torch.dtype = torch.float32, tol: float = REL_TOL) -> None:  # fmt: skip
    args = _on(case.make(dtype), device)
    names = [k for k in GRAD_NAMES if args[k] is not None]
    leaves = [args[k] for k in names]
    out, last = TritonScan(config).scan(**args, return_last_state=True)
    ref_out, ref_last = selective_scan(**args, return_last_state=True, backend="reference")
    assert out.dtype == dtype and last.dtype == dtype and not last.requires_grad
    _close(out, ref_out, "out", tol)
    _close(last, ref_last, "last_state", tol)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=dtype).to(device)
    grads = torch.autograd.grad((out * weight).sum(), leaves)
    ref_grads = torch.autograd.grad((ref_out * weight).sum(), leaves)
    for name, g, rg in zip(names, grads, ref_grads, strict=True):
        assert g.shape == rg.shape and g.dtype == rg.dtype, name
        _close(g, rg, f"grad {name}", tol)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.bc}-b{c.batch}-L{c.length}-N{c.d_state}-z{int(c.use_z)}")
def test_matches_reference_forward_and_backward(case: ScanCase, device: str) -> None:
    _check_against_reference(case, device)


@pytest.mark.parametrize(
    "config",
    [TritonScanConfig(block_t=4, chunk_blocks=1), TritonScanConfig(block_t=8, chunk_blocks=3), TritonScanConfig()],
    ids=["chunk4", "chunk24", "default"],
)
def test_block_and_chunk_sizes_do_not_change_the_result(config: TritonScanConfig, device: str) -> None:
    _check_against_reference(ScanCase(1, 2, 4, 27, "grouped", groups=2), device, config)


def test_float64_is_exact_to_rounding(device: str) -> None:
    _check_against_reference(ScanCase(1, 2, 3, 11, "grouped", groups=1), device, dtype=torch.float64, tol=1e-10)


def test_spec_vector(device: str) -> None:
    kwargs, want_out, want_last = spec_vector()
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    out, last = TritonScan(TINY).scan(**kwargs, return_last_state=True)
    torch.testing.assert_close(out.cpu(), want_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(last.cpu(), want_last, atol=1e-6, rtol=0)


def test_bf16_inputs_are_read_as_they_are_and_out_keeps_their_dtype(device: str) -> None:
    args = _on(ScanCase(1, 2, 4, 10).make(), device)
    half = {k: v.detach().bfloat16() if k in ("u", "delta", "z", "B", "C") else v for k, v in args.items()}
    out = TritonScan(TINY).scan(**half)
    ref = selective_scan(**half, backend="reference")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_strided_inputs_need_no_copy(device: str) -> None:
    args = _on(ScanCase(2, 2, 3, 9, "shared").make(), device)
    u_t = args["u"].detach().transpose(1, 2).contiguous().transpose(1, 2)  # same values, strided
    assert not u_t.is_contiguous()
    ref = selective_scan(**{**args, "u": u_t}, backend="reference")
    _close(TritonScan(TINY).scan(**{**args, "u": u_t}), ref, "out")


def test_named_backend_runs_through_selective_scan(device: str) -> None:
    args = _on(ScanCase(1, 2, 2, 5).make(), device)
    assert resolve_backend("triton", device) == "triton"
    _close(selective_scan(**args, backend="triton"), selective_scan(**args, backend="reference"), "out")


# --- SS2D's four-direction entry -------------------------------------------------------------------------

K = 4


def _cross_inputs(b: int, d: int, n: int, h: int, w: int, device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    length = h * w
    tensors = [
        torch.randn(b, d, h, w, generator=g),
        torch.randn(b, K, d, length, generator=g) * 0.5,
        -torch.rand(K * d, n, generator=g) * 2 - 0.1,
        torch.randn(b, K, n, length, generator=g),
        torch.randn(b, K, n, length, generator=g),
        torch.randn(K * d, generator=g),
        torch.randn(K * d, generator=g) * 0.5,
    ]
    return [t.to(device).requires_grad_() for t in tensors]


def _unfused_reference(x, delta, A, B, C, D, bias):
    b, d, h, w = x.shape
    length = h * w
    ys = selective_scan(cross_scan(x).reshape(b, K * d, length), to_scan_order(delta, h, w).reshape(b, K * d, length),
                        A, to_scan_order(B, h, w), to_scan_order(C, h, w), D=D, delta_bias=bias,
                        delta_softplus=True, backend="reference")  # fmt: skip
    return cross_merge(ys.view(b, K, d, length), h, w)


def _triton_cross(x, delta, A, B, C, D, bias):
    b, d, h, w = x.shape
    return cross_scan_triton(x.reshape(b, d, h * w), delta, A, B, C, D, bias, h, w, True, TINY)


@pytest.mark.parametrize("hw", [(3, 5), (1, 6), (7, 1)])
def test_four_direction_entry_matches_the_explicit_copies(hw: tuple[int, int], device: str) -> None:
    inputs = _cross_inputs(1, 2, 3, *hw, device)
    weight = torch.randn(1, 2, hw[0] * hw[1], generator=torch.Generator().manual_seed(1)).to(device)
    out = _triton_cross(*inputs)
    ref = _unfused_reference(*inputs)
    _close(out, ref, "out")
    grads = torch.autograd.grad((out * weight).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * weight).sum(), inputs)
    for name, g, rg in zip(("x", "delta", "A", "B", "C", "D", "delta_bias"), grads, ref_grads, strict=True):
        assert g.shape == rg.shape, name
        _close(g, rg, f"grad {name}")


def test_cross_selective_scan_dispatches_triton_to_the_four_direction_entry(device: str) -> None:
    inputs = [t.detach() for t in _cross_inputs(1, 2, 2, 2, 3, device)]
    fused = cross_selective_scan(*inputs, backend="triton")
    copies = cross_selective_scan(*inputs, backend="triton", fuse=False)
    _close(fused, _unfused_reference(*inputs), "fused")
    _close(copies, fused, "copies")


# --- SS2D on the triton backend ---------------------------------------------------------------------------


def test_ss2d_on_triton_matches_the_reference_backend(device: str) -> None:
    torch.manual_seed(0)
    layer = SS2D(4, SSMConfig(d_state=2, expand=1.0, scan_backend="reference")).to(device)
    x = torch.randn(1, 3, 3, 4, device=device)
    with torch.no_grad():
        ref = layer(x)
        layer.scan_backend = "triton"
        out = layer(x)
    _close(out, ref, "SS2D out")


def test_ss2d_passes_bf16_tensors_to_the_triton_scan_without_fp32_copies(monkeypatch: pytest.MonkeyPatch,
                                                                         device: str) -> None:  # fmt: skip
    seen: dict[str, torch.dtype] = {}

    def fake_scan(x, dts, A, bs, cs, **kwargs):
        seen.update(x=x.dtype, dts=dts.dtype, bs=bs.dtype, cs=cs.dtype, fuse=kwargs["fuse"])
        return x.new_zeros(x.shape[0], x.shape[1], x.shape[2] * x.shape[3])

    monkeypatch.setattr(ss2d_module, "cross_selective_scan", fake_scan)
    layer = SS2D(4, SSMConfig(d_state=2, expand=1.0, scan_backend="triton")).to(device, torch.bfloat16)
    with torch.no_grad():
        layer(torch.randn(1, 3, 3, 4, device=device, dtype=torch.bfloat16))
    assert seen == {"x": torch.bfloat16, "dts": torch.bfloat16, "bs": torch.bfloat16, "cs": torch.bfloat16,
                    "fuse": True}  # fmt: skip
    layer.scan_backend = "reference"
    with torch.no_grad():
        layer(torch.randn(1, 3, 3, 4, device=device, dtype=torch.bfloat16))
    assert seen["x"] == seen["bs"] == torch.float32  # other backends keep their fp32 copies
