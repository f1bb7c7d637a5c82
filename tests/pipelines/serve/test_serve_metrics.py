"""``/metrics``: the latency histogram is counted per camera, and the Ray head exposes the actors' counts."""

from __future__ import annotations

from pipelines.serve.metrics import LATENCY_BUCKETS_MS, LatencyHistograms, ServeMetrics
from pipelines.stats import FrameDone


def _frame(latency_ms: float) -> FrameDone:
    return FrameDone(index=0, pts=0, time_s=0.0, latency_ms=latency_ms, density=None, frames_in=1, frames_out=1,
                     frames_dropped=0, fps=25.0, queue_depths=())  # fmt: skip


def test_latency_histogram_counts_each_frame_in_its_bucket() -> None:
    metrics = ServeMetrics(list, list)
    for latency_ms in (3.0, 5.0, 7.5, 9000.0):  # 5.0 is on a bound: it counts in le="5.0"
        metrics.frame("a", _frame(latency_ms))
    text = metrics.text().decode()
    assert 'cliphaze_camera_latency_ms_bucket{camera="a",le="5.0"} 2.0' in text
    assert 'cliphaze_camera_latency_ms_bucket{camera="a",le="10.0"} 3.0' in text
    assert 'cliphaze_camera_latency_ms_bucket{camera="a",le="5120.0"} 3.0' in text
    assert 'cliphaze_camera_latency_ms_bucket{camera="a",le="+Inf"} 4.0' in text
    assert 'cliphaze_camera_latency_ms_count{camera="a"} 4.0' in text
    assert 'cliphaze_camera_latency_ms_sum{camera="a"} 9015.5' in text
    metrics.forget("a")  # a removed camera leaves the next scrape
    assert 'camera="a"' not in metrics.text().decode()


def test_head_exposes_the_histograms_the_actors_sent() -> None:
    # what two Ray actors put in their status: each one's own LatencyHistograms snapshot
    first, second = LatencyHistograms(), LatencyHistograms()
    first.observe("c0", 12.0)
    second.observe("c1", 30.0)
    second.observe("c1", 50.0)
    sent = [first.snapshot(), second.snapshot()]
    assert len(sent[1]["c1"].buckets) == len(LATENCY_BUCKETS_MS) + 1
    head = ServeMetrics(list, list, lambda: {n: c for snap in sent for n, c in snap.items()})
    text = head.text().decode()
    assert 'cliphaze_camera_latency_ms_bucket{camera="c0",le="20.0"} 1.0' in text
    assert 'cliphaze_camera_latency_ms_bucket{camera="c1",le="40.0"} 1.0' in text
    assert 'cliphaze_camera_latency_ms_count{camera="c1"} 2.0' in text
    assert 'cliphaze_camera_latency_ms_sum{camera="c1"} 80.0' in text
