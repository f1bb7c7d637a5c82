"""The scan benchmarks run on a tiny problem and report what they timed."""

from __future__ import annotations

import pytest

from cliphaze.ops import ScanTooLarge
from pipelines.bench import scan as bench_module
from pipelines.bench.scan import (
    CUDA_CONFIG,
    OUT_OF_MEMORY,
    ScanBenchConfig,
    format_cross_scan_report,
    format_scan_report,
    run_cross_scan_benchmark,
    run_scan_benchmark,
)

TINY = ScanBenchConfig(d_inner=4, d_state=4, height=6, width=5, repeats=1)


def test_scan_benchmark_times_each_backend_against_the_reference() -> None:
    results = run_scan_benchmark(TINY, ["reference", "chunked"])
    assert [r.backend for r in results] == ["reference", "chunked"]
    reference, chunked = results
    # The reference's backward is not timed by default (autograd through L steps); every other one is.
    assert reference.forward_backward_ms is None and reference.forward_ratio == pytest.approx(1.0)
    assert chunked.forward_ms > 0 and chunked.forward_backward_ms is not None and chunked.forward_backward_ms > 0
    assert chunked.forward_ratio == pytest.approx(reference.forward_ms / chunked.forward_ms)
    assert chunked.forward_backward_ratio is None
    bwd_over_fwd = (chunked.forward_backward_ms - chunked.forward_ms) / chunked.forward_ms
    assert chunked.backward_over_forward == pytest.approx(bwd_over_fwd)
    row = format_scan_report(TINY, results).splitlines()[-1].split()
    assert row == ["chunked", f"{chunked.forward_ms:.1f}", f"{chunked.forward_backward_ms:.1f}",
                   f"{chunked.forward_ratio:.1f}", "-", f"{bwd_over_fwd:.2f}"]  # fmt: skip


def test_cross_scan_benchmark_compares_the_fused_call_on_cpu() -> None:
    result = run_cross_scan_benchmark(TINY)
    assert result.backend == "cpu_fused"
    assert result.fused_ms is not None and min(*result.fused_ms, *result.unfused_ms) > 0
    report = format_cross_scan_report(result)
    assert "copies + scan" in report and "fused" in report


def test_a_backend_that_cannot_hold_the_problem_is_reported_out_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    real = bench_module.selective_scan

    def refusing(*args, backend: str, **kwargs):
        if backend == "chunked":
            raise ScanTooLarge("scan backend 'chunked' needs about 12 GiB")
        return real(*args, backend=backend, **kwargs)

    monkeypatch.setattr(bench_module, "selective_scan", refusing)
    results = run_scan_benchmark(TINY, ["chunked", "reference"])
    assert results[0].note == OUT_OF_MEMORY and results[0].forward_ms is None
    assert results[1].forward_ms is not None and results[1].note is None
    assert "out of memory" in format_scan_report(TINY, results)


def test_the_cuda_configuration_is_the_issue_size() -> None:
    assert (CUDA_CONFIG.batch, CUDA_CONFIG.directions * CUDA_CONFIG.d_inner, CUDA_CONFIG.d_state) == (1, 384, 16)
    assert CUDA_CONFIG.height * CUDA_CONFIG.width == 129_600 and CUDA_CONFIG.dtype == "bfloat16"


@pytest.mark.gpu
def test_cuda_scan_benchmark_reports_triton_and_chunked() -> None:
    results = run_scan_benchmark(CUDA_CONFIG, ["triton", "chunked"])
    assert results[0].backend == "triton" and results[0].forward_backward_ms is not None
    assert results[1].backend == "chunked"
    cross = run_cross_scan_benchmark(CUDA_CONFIG)
    assert cross.backend in ("triton", "mamba_cuda")
