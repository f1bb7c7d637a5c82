"""Every CPU scan backend against the spec's test vector and against the sequential reference."""

from __future__ import annotations

import logging

import pytest
import torch
from scan_cases import ScanCase, spec_vector

import cliphaze.ops.scan as scan
from cliphaze.ops import (
    BackendUnavailable,
    ScanError,
    ScanShapeError,
    ScanTooLarge,
    available_backends,
    resolve_backend,
    selective_scan,
)
from cliphaze.ops.scan import AUTO_ORDER
from cliphaze.ops.scan.chunked import WORKING_SET_COPIES, check_fits_in_memory

CPU_BACKENDS = ["reference", "chunked", "cpu_fused"]
FAST_BACKENDS = ["chunked", "cpu_fused"]
REL_TOL = 1e-4
GRAD_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]

CASES = [
    ScanCase(2, 8, 4, 70, "grouped", groups=2),
    ScanCase(1, 4, 3, 1, "grouped", groups=4),  # L = 1
    ScanCase(2, 6, 5, 129, "grouped", groups=3),  # odd L, crosses the 64-step checkpoints
    ScanCase(2, 8, 4, 33, "shared"),
    ScanCase(1, 5, 16, 65, "invariant"),
    ScanCase(2, 4, 2, 17, "grouped", groups=1, use_d=False, use_z=False, use_bias=False, softplus=False),
    ScanCase(1, 6, 3, 40, "shared", use_z=False, softplus=True, use_bias=False),
    ScanCase(3, 4, 4, 9, "invariant", use_d=False, use_bias=True, softplus=False),
]


def _run(backend: str, args: dict, return_last_state: bool = True):
    return selective_scan(**args, return_last_state=return_last_state, backend=backend)


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = expected.abs().max().clamp_min(1.0 if expected.abs().max() == 0 else 1e-30)
    err = (actual.double() - expected.double()).abs().max() / scale
    assert err <= REL_TOL, f"{what}: relative error {err:.2e} > {REL_TOL}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_spec_vector(backend: str) -> None:
    kwargs, want_out, want_last = spec_vector()
    out, last = selective_scan(**kwargs, return_last_state=True, backend=backend)
    torch.testing.assert_close(out, want_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(last, want_last, atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.bc}-L{c.length}-N{c.d_state}-z{int(c.use_z)}")
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_matches_reference_forward_and_backward(backend: str, case: ScanCase) -> None:
    args = case.make()
    leaves = [args[k] for k in GRAD_NAMES if args[k] is not None]
    ref_out, ref_last = _run("reference", args)
    out, last = _run(backend, args)
    _close(out, ref_out, "out")
    _close(last, ref_last, "last_state")
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    ref_grads = torch.autograd.grad((ref_out * weight).sum(), leaves)
    grads = torch.autograd.grad((out * weight).sum(), leaves)
    names = [k for k in GRAD_NAMES if args[k] is not None]
    for name, g, rg in zip(names, grads, ref_grads, strict=True):
        assert g.shape == rg.shape and g.dtype == rg.dtype, name
        _close(g, rg, f"grad {name}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_low_precision_input_keeps_dtype(backend: str) -> None:
    args = ScanCase(1, 4, 4, 20).make()
    half = {k: v.detach().bfloat16() if k in ("u", "delta", "z") else v for k, v in args.items()}
    out = selective_scan(**half, backend=backend)
    ref = selective_scan(**half, backend="reference")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_cpu_fused_last_state_has_no_grad_and_accepts_non_contiguous() -> None:
    args = ScanCase(2, 4, 3, 12, "shared").make()
    u_t = args["u"].detach().transpose(1, 2).contiguous().transpose(1, 2)  # same values, strided
    assert not u_t.is_contiguous()
    ref = selective_scan(**{**args, "u": u_t}, backend="reference")
    out, last = selective_scan(**{**args, "u": u_t}, return_last_state=True, backend="cpu_fused")
    _close(out, ref, "out")
    assert not last.requires_grad


@pytest.mark.slow
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_long_sequence_with_large_delta_stays_finite(backend: str) -> None:
    """L = 16384 with delta up to 1 and A down to -16: cumulative decays reach e^-300000."""
    gen = torch.Generator().manual_seed(3)
    dim, n_state, length = 4, 16, 16384
    args = {
        "u": torch.randn(1, dim, length, generator=gen),
        "delta": torch.rand(1, dim, length, generator=gen),  # in [0, 1)
        "A": -torch.arange(1, n_state + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(1, 2, n_state, length, generator=gen),
        "C": torch.randn(1, 2, n_state, length, generator=gen),
        "D": torch.ones(dim),
        "delta_softplus": True,
    }
    args["delta"][..., ::97] = 1.0
    out, last = selective_scan(**args, return_last_state=True, backend=backend)
    ref, ref_last = selective_scan(**args, return_last_state=True, backend="reference")
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    _close(out, ref, "out")
    _close(last, ref_last, "last_state")


def test_auto_picks_cpu_fused_on_cpu_and_logs_once(caplog: pytest.LogCaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(scan, "_AUTO_LOG", scan._AutoChoiceLog())  # as in a new process: nothing logged yet
    args = ScanCase(1, 2, 2, 4).make()
    with caplog.at_level(logging.INFO, logger="cliphaze.ops.scan"):
        assert resolve_backend("auto", "cpu") == "cpu_fused"
        selective_scan(**args)
        selective_scan(**args)
    chosen = [r for r in caplog.records if "chose" in r.getMessage()]
    assert len(chosen) == 1
    assert available_backends()["cpu_fused"][0]


def test_mamba_cuda_on_cpu_raises_with_install_hint() -> None:
    args = ScanCase(1, 2, 2, 4).make()
    with pytest.raises(BackendUnavailable, match=r"pip install 'cliphaze\[cuda\]'"):
        selective_scan(**args, backend="mamba_cuda")
    ok, reason = available_backends("cpu")["mamba_cuda"]
    assert not ok and "cliphaze[cuda]" in reason


def test_unknown_backend_and_bad_shapes_raise() -> None:
    args = ScanCase(1, 4, 2, 4).make()
    with pytest.raises(ValueError, match="unknown scan backend"):
        selective_scan(**args, backend="nope")
    bad = {**args, "B": torch.zeros(1, 3, 2, 4)}  # 3 groups do not divide D = 4
    with pytest.raises(ScanShapeError, match="groups"):
        selective_scan(**bad, backend="chunked")
    with pytest.raises(ScanShapeError, match="A must be"):
        selective_scan(**{**args, "A": torch.zeros(3, 2)}, backend="cpu_fused")


def test_auto_on_cpu_stays_cpu_fused_and_triton_needs_the_interpreter_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, reason = available_backends("cpu")["triton"]
    assert not ok and "TRITON_INTERPRET" in reason
    with pytest.raises(BackendUnavailable, match="triton"):
        selective_scan(**ScanCase(1, 2, 2, 4).make(), backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the backend may then be named on the CPU (tests) ...
    assert resolve_backend("auto", "cpu") == "cpu_fused"  # ... but "auto" never picks it there


def test_auto_on_cuda_prefers_mamba_cuda_then_triton_and_never_chunked() -> None:
    assert AUTO_ORDER["cuda"] == ("mamba_cuda", "triton")


def test_chunked_refuses_a_working_set_larger_than_the_free_memory() -> None:
    # The 960x540 stage: b=1, 4x96 channels, N=16, L=129,600 -> 3.2 GB per (b, D, N, L) fp32 tensor.
    size = (1, 384, 16, 129_600)
    per_tensor = 384 * 16 * 129_600 * 4
    check_fits_in_memory(*size, free_bytes=WORKING_SET_COPIES * per_tensor)  # fits exactly: no error
    with pytest.raises(ScanTooLarge, match=r"'chunked' needs about 11\.9 GiB .* 2\.0 GiB free; use backend 'triton'"):
        check_fits_in_memory(*size, free_bytes=2 * 2**30)
    assert issubclass(ScanTooLarge, ScanError)
