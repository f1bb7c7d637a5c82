"""Run counters: frames in/out/dropped, reconnects, fps and per-frame latency (decode -> encode)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

MS_PER_S = 1000.0
# Latency samples kept for the percentiles (a ring: long live runs stay bounded in memory).
LATENCY_WINDOW = 100_000


@dataclass(frozen=True)
class RunStats:
    """Summary of one run; ``to_json`` is what ``--stats PATH`` writes."""

    frames_in: int  # frames delivered by the source
    frames_out: int  # frames written to the sink
    frames_dropped: int  # frames a live source dropped (its keep-latest queue) because the engine fell behind
    reconnects: int  # source reconnects (live sources)
    wall_s: float  # from the start of the run to the last frame written
    fps: float  # frames_out / wall_s
    latency_ms_p50: float  # median time from leaving the decoder to being written, per frame
    latency_ms_p95: float  # 95th percentile of the same
    guidance_hits: int = 0  # frames restored with cached guidance
    guidance_misses: int = 0  # frames whose guidance was computed
    guidance_invalidations: int = 0  # scene cuts that forced a refresh
    stopped_early: bool = False  # the run ended on a stop request or a frame/duration limit
    corrupt_packets: int = 0  # damaged or undecodable video packets the source skipped (the run went on)
    extra: dict[str, float] = field(default_factory=dict)  # per-stage busy seconds, named "<stage>_busy_s"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


class StatsCollector:
    """Thread-safe counters the stages update; ``summary`` freezes them into :class:`RunStats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._start = time.perf_counter()
        self._last_out = self._start
        self.frames_in = 0
        self.frames_out = 0
        self.frames_dropped = 0
        self._latencies_ms: list[float] = []
        self._busy_s: dict[str, float] = {}

    def start(self) -> None:
        with self._lock:
            self._start = self._last_out = time.perf_counter()

    def frame_in(self) -> float:
        """Count a decoded frame; returns its entry timestamp (perf_counter seconds)."""
        with self._lock:
            self.frames_in += 1
        return time.perf_counter()

    def dropped(self, count: int = 1) -> None:
        with self._lock:
            self.frames_dropped += count

    def frame_out(self, entered_s: float) -> float:
        """Count a written frame that entered at ``entered_s``; returns its latency in ms."""
        now = time.perf_counter()
        latency_ms = (now - entered_s) * MS_PER_S
        with self._lock:
            self.frames_out += 1
            self._last_out = now
            if len(self._latencies_ms) >= LATENCY_WINDOW:
                del self._latencies_ms[: LATENCY_WINDOW // 2]
            self._latencies_ms.append(latency_ms)
        return latency_ms

    def busy(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._busy_s[stage] = self._busy_s.get(stage, 0.0) + seconds

    def elapsed_s(self) -> float:
        return time.perf_counter() - self._start

    def fps(self) -> float:
        """Frames written per second so far."""
        with self._lock:
            wall = self._last_out - self._start
            return self.frames_out / wall if wall > 0 else 0.0

    def summary(
        self, *, reconnects: int = 0, hits: int = 0, misses: int = 0, invalidations: int = 0, stopped: bool = False,
        corrupt_packets: int = 0,
    ) -> RunStats:
        with self._lock:
            wall = max(self._last_out - self._start, 0.0)
            lat = np.asarray(self._latencies_ms, dtype=np.float64)
            p50, p95 = (float(np.percentile(lat, 50)), float(np.percentile(lat, 95))) if lat.size else (0.0, 0.0)
            return RunStats(
                frames_in=self.frames_in,
                frames_out=self.frames_out,
                frames_dropped=self.frames_dropped,
                reconnects=reconnects,
                wall_s=wall,
                fps=self.frames_out / wall if wall > 0 else 0.0,
                latency_ms_p50=p50,
                latency_ms_p95=p95,
                guidance_hits=hits,
                guidance_misses=misses,
                guidance_invalidations=invalidations,
                stopped_early=stopped,
                corrupt_packets=corrupt_packets,
                extra={f"{k}_busy_s": v for k, v in sorted(self._busy_s.items())},
            )


@dataclass(frozen=True)
class FrameDone:
    """Progress event handed to ``on_frame`` after each frame is written (from the encode thread)."""

    index: int  # source frame index
    pts: int | None  # output pts (equal to the input pts)
    time_s: float | None  # pts in seconds
    latency_ms: float  # decode -> encode time of this frame
    density: float | None  # mean haze density of this frame's guidance in [0, 1], when computed
    frames_in: int  # counters so far
    frames_out: int
    frames_dropped: int
    fps: float  # frames written per second so far
    queue_depths: tuple[int, ...]  # items waiting per queue, upstream first: the source's frames, then each stage's
