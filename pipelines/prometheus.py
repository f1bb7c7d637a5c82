"""Prometheus endpoint for a run: fps, latency, queue depth, drops, reconnects, haze density.

Each ``MetricsServer`` owns its own registry (no module-level metrics), binds to 127.0.0.1 unless told
otherwise, and is fed by the runner's ``on_frame`` events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pipelines.stats import FrameDone

logger = logging.getLogger(__name__)

DEFAULT_BIND = "127.0.0.1"  # loopback only: exposing metrics beyond the host is an explicit choice
# Latency histogram buckets in milliseconds (real-time video: 40 ms is one frame at 25 fps).
LATENCY_BUCKETS_MS = (5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0, 2560.0, 5120.0)
# The queues of FrameDone.queue_depths; "decode_upload" is the source's own frame queue, which upload reads.
STAGE_QUEUES = ("decode_upload", "upload_guidance", "guidance_restore", "restore_download", "download_encode")


class MetricsError(RuntimeError):
    """The metrics endpoint could not be started (port in use, bad address)."""


class MetricsServer:
    """HTTP ``/metrics`` endpoint; call :meth:`update` with each frame event, :meth:`close` at the end."""

    def __init__(self, port: int, addr: str = DEFAULT_BIND, reconnects: Callable[[], int] | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

        self.registry = CollectorRegistry()
        self._fps = Gauge("cliphaze_fps", "Frames written per second since the start", registry=self.registry)
        self._latency = Histogram(
            "cliphaze_latency_ms",
            "Per-frame latency from decode to encode, in milliseconds",
            buckets=LATENCY_BUCKETS_MS,
            registry=self.registry,
        )
        self._frames = Counter("cliphaze_frames_out", "Frames written", registry=self.registry)
        self._dropped = Gauge("cliphaze_frames_dropped", "Frames dropped by the live policy", registry=self.registry)
        self._reconnects = Gauge("cliphaze_reconnects", "Source reconnects", registry=self.registry)
        self._density = Gauge("cliphaze_haze_density", "Mean haze density of the last frame, 0..1", registry=self.registry)
        self._queue = Gauge("cliphaze_queue_depth", "Items waiting per queue", ["queue"], registry=self.registry)
        self._reconnect_count = reconnects
        try:
            self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            raise MetricsError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}") from exc
        self.port = self._server.server_port
        logger.info("metrics at http://%s:%d/metrics", addr, self.port)

    def update(self, event: FrameDone) -> None:
        """Record one written frame."""
        self._fps.set(event.fps)
        self._latency.observe(event.latency_ms)
        self._frames.inc()
        self._dropped.set(event.frames_dropped)
        if event.density is not None:
            self._density.set(event.density)
        for name, depth in zip(STAGE_QUEUES, event.queue_depths):
            self._queue.labels(queue=name).set(depth)
        if self._reconnect_count is not None:
            self._reconnects.set(self._reconnect_count())

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
