"""Prometheus endpoint and JSON lines of a run."""

from __future__ import annotations

import urllib.request

from pipeline_fakes import CountingDehazer, ListSink, ListSource, make_frames

from pipelines.config import PipelineConfig
from pipelines.prometheus import MetricsServer
from pipelines.runner import run


def test_metrics_endpoint_reports_a_run() -> None:
    server = MetricsServer(0, reconnects=lambda: 3)
    try:
        config = PipelineConfig(want_density=True)
        run(ListSource(make_frames(6)), ListSink(), CountingDehazer(uses_guidance=False), config, on_frame=server.update)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.close()
    values = {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and not line.startswith("#")
    }
    assert values["cliphaze_frames_out_total"] == 6
    assert values["cliphaze_latency_ms_count"] == 6
    assert values["cliphaze_reconnects"] == 3
    assert values["cliphaze_frames_dropped"] == 0
    assert 0 < values["cliphaze_haze_density"] < 1
    assert values["cliphaze_fps"] > 0
    assert 'cliphaze_queue_depth{queue="decode_upload"}' in values


def test_metrics_bind_to_loopback_by_default() -> None:
    server = MetricsServer(0)
    try:
        assert server._server.server_address[0] == "127.0.0.1"
    finally:
        server.close()
