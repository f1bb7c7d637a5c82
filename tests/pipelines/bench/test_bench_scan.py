"""The scan benchmarks run on a tiny problem and report what they timed."""

from __future__ import annotations

import pytest

from pipelines.bench.scan import (
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
