"""Per-camera Prometheus metrics of ``cliphaze serve``, every series labelled ``camera``.

One registry per process (no module-level metrics). Counters that the cameras already keep (frames,
drops, reconnects, restarts) are read at scrape time by a custom collector, so a camera that is removed
on reload disappears from the next scrape. Latency is a histogram: :class:`LatencyHistograms` counts each
written frame into fixed buckets, and the collector reads its snapshot at scrape time too. The snapshot is
plain data, so a Ray actor sends it to the head with its status and the head's ``/metrics`` carries every
camera's histogram of the whole cluster.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class LatencyCounts:
    """One camera's latency histogram: frame counts per bucket of ``LATENCY_BUCKETS_MS``, then above the last."""

    buckets: tuple[int, ...]  # len(LATENCY_BUCKETS_MS) + 1, not cumulative
    sum_ms: float  # sum of every counted latency, ms

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus ``(le, count of frames <= le)`` pairs, ``+Inf`` last."""
        from prometheus_client.utils import floatToGoString

        out, total = [], 0
        for bound, count in zip((*LATENCY_BUCKETS_MS, float("inf")), self.buckets):
            total += count
            out.append((floatToGoString(bound), float(total)))
        return out


class LatencyHistograms:
    """Per-camera latency bucket counts, fed from the cameras' threads (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, camera: str, latency_ms: float) -> None:
        slot = bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)  # a latency equal to a bound counts in it (le)
        with self._lock:
            counts = self._counts.setdefault(camera, [0] * (len(LATENCY_BUCKETS_MS) + 1))
            counts[slot] += 1
            self._sums[camera] = self._sums.get(camera, 0.0) + latency_ms

    def forget(self, camera: str) -> None:
        with self._lock:
            self._counts.pop(camera, None)
            self._sums.pop(camera, None)

    def snapshot(self) -> dict[str, LatencyCounts]:
        with self._lock:
            return {name: LatencyCounts(tuple(c), self._sums[name]) for name, c in self._counts.items()}


class ServeMetrics:
    """The registry of a serve process; ``text()`` is the ``/metrics`` body.

    Args:
        cameras: the ``/cameras`` entries.
        batchers: the shared dehazers' counters.
        latency: the cameras' latency histograms; by default those this object records (:meth:`frame`),
            on the Ray head those the actors sent.
    """

    def __init__(self, cameras: Callable[[], list[dict[str, Any]]], batchers: Callable[[], list[dict[str, Any]]],
                 latency: Callable[[], dict[str, LatencyCounts]] | None = None) -> None:  # fmt: skip
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry()
        self._cameras = cameras
        self._batchers = batchers
        self.latency = LatencyHistograms()
        self._latency = latency or self.latency.snapshot
        self.registry.register(_Collector(self))

    def frame(self, camera: str, event: FrameDone) -> None:
        """Record one written frame of ``camera``."""
        self.latency.observe(camera, event.latency_ms)

    def forget(self, camera: str) -> None:
        """Drop a removed camera's histogram series."""
        self.latency.forget(camera)

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
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

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
        latency = HistogramMetricFamily("cliphaze_camera_latency_ms", "Per-frame latency from decode to encode, ms",
                                        labels=["camera"])  # fmt: skip
        for name, counts in sorted(self._owner._latency().items()):
            latency.add_metric([name], counts.cumulative(), counts.sum_ms)
        yield latency
        calls = CounterMetricFamily("cliphaze_batch_calls", "Restore calls of a shared dehazer", labels=["model"])
        frames = CounterMetricFamily("cliphaze_batch_frames", "Frames restored by a shared dehazer", labels=["model"])
        for batcher in self._owner._batchers():
            calls.add_metric([batcher["model"]], float(batcher["calls"]))
            frames.add_metric([batcher["model"]], float(batcher["frames"]))
        yield calls
        yield frames
