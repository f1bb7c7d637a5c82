"""Per-camera Prometheus metrics of ``cliphaze serve``, every series labelled ``camera``.

One registry per process (no module-level metrics). Counters that the cameras already keep (frames,
drops, reconnects, restarts) are read at scrape time by a custom collector, so a camera that is removed
on reload disappears from the next scrape; latency is a histogram fed by each written frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pipelines.stats import FrameDone

LATENCY_BUCKETS_MS = (5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0, 2560.0, 5120.0)
# /cameras field -> (metric name, help, kind)
FIELDS = {
    "fps": ("cliphaze_camera_fps", "Frames written per second over the recent frames", "gauge"),
    "latency_ms_p95": ("cliphaze_camera_latency_p95_ms", "Decode-to-encode latency p95 over the recent frames",
                       "gauge"),
    "frames_out": ("cliphaze_camera_frames_out", "Frames written", "counter"),
    "drops": ("cliphaze_camera_frames_dropped", "Frames dropped by the live keep-latest policy", "counter"),
    "reconnects": ("cliphaze_camera_reconnects", "Source reconnect attempts", "counter"),
    "restarts": ("cliphaze_camera_restarts", "Runs restarted after an output or engine failure", "counter"),
    "repeated_frames": ("cliphaze_camera_repeated_frames", "Frames repeated while the camera was away", "counter"),
    "haze_density": ("cliphaze_camera_haze_density", "Mean haze density of the latest guidance, 0..1", "gauge"),
}  # fmt: skip


class ServeMetrics:
    """The registry of a serve process; ``text()`` is the ``/metrics`` body."""

    def __init__(self, cameras: Callable[[], list[dict[str, Any]]], batchers: Callable[[], list[dict[str, Any]]]
                 ) -> None:  # fmt: skip
        from prometheus_client import CollectorRegistry, Histogram

        self.registry = CollectorRegistry()
        self._cameras = cameras
        self._batchers = batchers
        self._latency = Histogram("cliphaze_camera_latency_ms", "Per-frame latency from decode to encode, ms",
                                  ["camera"], buckets=LATENCY_BUCKETS_MS, registry=self.registry)  # fmt: skip
        self.registry.register(_Collector(self))

    def frame(self, camera: str, event: FrameDone) -> None:
        """Record one written frame of ``camera``."""
        self._latency.labels(camera=camera).observe(event.latency_ms)

    def forget(self, camera: str) -> None:
        """Drop a removed camera's histogram series."""
        try:
            self._latency.remove(camera)
        except KeyError:
            pass

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _Collector:
    """Reads the cameras' own counters at scrape time."""

    def __init__(self, owner: ServeMetrics) -> None:
        self._owner = owner

    def describe(self) -> list[Any]:
        return []  # unchecked collector: the series change with the cameras

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cameras = self._owner._cameras()
        for key, (name, text, kind) in FIELDS.items():
            family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = family_type(name, text, labels=["camera"])
            for camera in cameras:
                value = camera.get(key)
                if value is not None:
                    family.add_metric([camera["name"]], float(value))
            yield family
        up = GaugeMetricFamily("cliphaze_camera_up", "1 while the camera delivers frames", labels=["camera", "state"])
        for camera in cameras:
            up.add_metric([camera["name"], camera["state"]], 1.0 if camera["state"] == "running" else 0.0)
        yield up
        calls = CounterMetricFamily("cliphaze_batch_calls", "Restore calls of a shared dehazer", labels=["model"])
        frames = CounterMetricFamily("cliphaze_batch_frames", "Frames restored by a shared dehazer", labels=["model"])
        for batcher in self._owner._batchers():
            calls.add_metric([batcher["model"]], float(batcher["calls"]))
            frames.add_metric([batcher["model"]], float(batcher["frames"]))
        yield calls
        yield frames
