"""One camera's supervisor: its own source, engine and sink, restarted alone when its output fails.

A :class:`CameraWorker` is a thread that opens the camera (a live camera that is down at start is waited
for, then reconnects on its own jittered backoff, ``stream.source``), opens its output (publish targets
reopen themselves, ``stream.republish``; live outputs repeat the last frame while the camera is away,
``pipelines.gap_filler``), and runs the ordinary engine (``pipelines.runner.run``) with a
:class:`~pipelines.serve.batcher.CameraDehazer`: decode, guidance (its own cache) and encode run in the
camera's threads; only restoration is shared. When the run fails (output gone, encoder error, a failed
batch) the camera logs one line with its name, finalizes what it wrote and starts again after a backoff;
the other cameras never notice. A file source that ends makes the camera ``finished``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import GuidanceCacheConfig, PipelineConfig
from pipelines.serve.batcher import CrossCameraBatcher
from pipelines.serve.config import CameraConfig
from pipelines.stats import FrameDone
from stream.reconnect import ReconnectPolicy
from stream.uri import redact

logger = logging.getLogger(__name__)

RECENT_FRAMES = 250  # latency percentiles and fps are computed over this many recent frames (10 s at 25 fps)
STOP_GRACE_S = 2.0  # after a stop request, how long a camera may take to drain before its source is closed
RESTART_POLICY = ReconnectPolicy(initial_s=1.0, cap_s=30.0, reset_after_s=30.0)  # between failed runs
# Frames a live camera may buffer before the oldest is dropped: 8 = 0.32 s at 25 fps, so a short hiccup of a
# shared CPU (another camera reconnecting, a busy neighbour process) costs latency, not frames.
LIVE_QUEUE_FRAMES = 8
# A running camera whose output has not advanced for this long is "blocked" (its source still delivers: the
# output or the shared dehazer holds it up) or "stalled" (nothing moves; the source's own deadline has not
# fired yet). 3 s: well past a batch or an encoder flush, well before Frigate's 20 s camera watchdog.
OUTPUT_IDLE_S = 3.0
STATES = ("starting", "running", "reconnecting", "blocked", "stalled", "restarting", "stopping", "stopped", "finished",
          "failed")  # fmt: skip


def _free_name(path: Path, tag: str) -> Path:
    """``NAME.TAGn.EXT`` with the first n not taken."""
    n = 1
    while path.with_name(f"{path.stem}.{tag}{n}{path.suffix}").exists():
        n += 1
    return path.with_name(f"{path.stem}.{tag}{n}{path.suffix}")


class CameraStatus:
    """Live counters of one camera, updated from its threads; :meth:`snapshot` is the ``/cameras`` entry."""

    def __init__(self, camera: CameraConfig) -> None:
        self.camera = camera
        self._lock = threading.Lock()
        self.state = "starting"
        self.frames_out = 0  # frames written (all runs)
        self.drops = 0  # frames dropped by the live policy (all runs)
        self.restarts = 0  # runs restarted after a failure
        self.last_error = ""
        self.density: float | None = None
        self.started_s = time.monotonic()
        self._latency_ms: deque[float] = deque(maxlen=RECENT_FRAMES)
        self._out_s: deque[float] = deque(maxlen=RECENT_FRAMES)
        self.source_stats: Callable[[], Any] = lambda: None
        self.sink_stats: Callable[[], dict[str, int]] = dict

    def frame(self, event: FrameDone, drops_before: int) -> None:
        with self._lock:
            self.frames_out += 1
            self.drops = drops_before + event.frames_dropped
            self._latency_ms.append(event.latency_ms)
            self._out_s.append(time.monotonic())
            if event.density is not None:
                self.density = event.density
            if self.state in ("starting", "reconnecting", "restarting"):
                self.state = "running"

    def set(self, **values: Any) -> None:
        with self._lock:
            for key, value in values.items():
                setattr(self, key, value)

    def recent(self) -> tuple[float, float, float]:
        """(fps, latency p50 ms, latency p95 ms) over the recent frames."""
        with self._lock:
            lat = np.asarray(self._latency_ms, dtype=np.float64)
            times = list(self._out_s)
        fps = 0.0
        if len(times) > 1 and time.monotonic() - times[-1] < 2.0:
            fps = (len(times) - 1) / max(times[-1] - times[0], 1e-9)
        if not lat.size:
            return fps, 0.0, 0.0
        return fps, float(np.percentile(lat, 50)), float(np.percentile(lat, 95))

    def snapshot(self) -> dict[str, Any]:
        fps, p50, p95 = self.recent()
        source = self.source_stats()
        with self._lock:
            state = self.state
            idle_s = time.monotonic() - self._out_s[-1] if self._out_s else 0.0
            if state == "running" and source is not None and source.state in ("retrying", "stalled", "starting"):
                state = "reconnecting"
            elif state == "running" and idle_s > OUTPUT_IDLE_S:
                delivering = source is not None and source.state == "running"
                state = "blocked" if delivering else "stalled"
            return {
                "name": self.camera.name,
                "state": state,
                "source": redact(self.camera.source),
                "sink": redact(self.camera.sink),
                "model": self.camera.model,
                "fps": round(fps, 2),
                "latency_ms_p50": round(p50, 1),
                "latency_ms_p95": round(p95, 1),
                "frames_out": self.frames_out,
                "drops": self.drops + (source.drops if source is not None else 0),
                "reconnects": source.reconnects if source is not None else 0,
                "source_state": source.state if source is not None else "closed",
                "restarts": self.restarts,
                "haze_density": None if self.density is None else round(self.density, 4),
                "last_error": self.last_error,
                "uptime_s": round(time.monotonic() - self.started_s, 1),
                "output_idle_s": round(idle_s, 1),
                **self.sink_stats(),
            }


class OutputWatch:
    """Logs once, with the camera's name, when a camera's output stops (``blocked`` or ``stalled`` in its
    snapshot) and when it flows again; the main loop hands it the ``/cameras`` list every second."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def check(self, cameras: list[dict[str, Any]]) -> None:
        seen: dict[str, str] = {}
        for camera in cameras:
            name, state = camera["name"], camera["state"]
            before = self._last.get(name)
            if state in ("blocked", "stalled") and before != state:
                why = "its source still delivers: the output or the dehazer holds it up" if state == "blocked" else \
                    "neither its source nor its output moves"  # fmt: skip
                logger.warning("camera %s: %s, no output for %.1f s (%s)", name, state,
                               camera.get("output_idle_s", 0.0), why)  # fmt: skip
            elif before in ("blocked", "stalled") and state == "running":
                logger.warning("camera %s: output flowing again", name)
            seen[name] = state
        self._last = seen


class CameraWorker:
    """Supervises one camera in its own thread (see module docstring)."""

    def __init__(self, camera: CameraConfig, batcher: CrossCameraBatcher, *, on_frame: Callable[[str, FrameDone], None]
                 | None = None, restart: ReconnectPolicy = RESTART_POLICY) -> None:  # fmt: skip
        self.camera = camera
        self.batcher = batcher
        self.status = CameraStatus(camera)
        self._on_frame = on_frame
        self._restart = restart
        self._stop = threading.Event()
        self._source: Any = None
        self._thread = threading.Thread(target=self._main, name=f"camera-{camera.name}", daemon=True)

    @property
    def name(self) -> str:
        return self.camera.name

    def start(self) -> CameraWorker:
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Drain and finalize (non-blocking); a camera that is away is closed after ``STOP_GRACE_S``."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self.status.set(state="stopping")

        def close_if_stuck() -> None:
            self._thread.join(STOP_GRACE_S)
            source = self._source
            if self._thread.is_alive() and source is not None:
                logger.info("camera %s: source still away, closing it", self.name)
                source.close()

        threading.Thread(target=close_if_stuck, name=f"camera-{self.name}-stop", daemon=True).start()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the camera to stop; True when it did."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    # --- the camera thread ------------------------------------------------------------------------------

    def _main(self) -> None:
        rng = random.Random()
        attempt = 0
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    finished = self._run_once(attempt)
                except Exception as exc:  # camera boundary: log once with the name, restart this camera alone
                    if self._stop.is_set():
                        break
                    line = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
                    attempt = 1 if time.monotonic() - started >= self._restart.reset_after_s else attempt + 1
                    delay = self._restart.delay_s(attempt, rng)
                    logger.warning("camera %s: %s; restarting it in %.1f s", self.name, line, delay)
                    logger.debug("camera %s failure", self.name, exc_info=True)
                    self.status.set(state="restarting", last_error=line, restarts=self.status.restarts + 1)
                    self._stop.wait(delay)
                    continue
                if finished:
                    self.status.set(state="finished")
                    logger.info("camera %s: source ended", self.name)
                    return
        finally:
            self.batcher.detach(self.name)
            if self.status.state != "finished":
                self.status.set(state="stopped")

    def _sink_path(self, attempt: int) -> str:
        """The output of run ``attempt`` (0 = the camera's first run in this worker). A plain file that exists
        is never replaced, whoever wrote it (an earlier run of this camera, a restart after a failure, the
        camera before a reload changed it, a Ray actor it ran in before): the new output is
        ``NAME.restartN.EXT`` next to it."""
        from stream.sink import PART_SUFFIX
        from stream.uri import parse_sink

        sink = self.camera.sink
        if parse_sink(sink, self.camera.format).kind != "file":
            return sink
        path = Path(sink)
        leftover = Path(sink + PART_SUFFIX)
        if leftover.exists() and leftover.stat().st_size == 0:  # killed before its first packet: nothing to keep
            leftover.unlink()
            logger.info("camera %s: removed the empty output of a killed run", self.name)
        elif leftover.exists():  # a killed process (or Ray actor) left it: keep it, it plays up to its last fragment
            kept = _free_name(path, "crash")
            leftover.rename(kept)
            logger.warning("camera %s: kept the unfinished output of a killed run as %s", self.name, kept)
        if not path.exists():
            return sink
        return str(_free_name(path, "restart"))

    def _run_once(self, attempt: int) -> bool:
        """One run from open to close. Returns True when the source ended (files); raises on failure."""
        from pipelines.gap_filler import GapFiller
        from pipelines.runner import run
        from stream.encoder import EncoderConfig
        from stream.republish import PUBLISH_KINDS, RepublishingSink
        from stream.sink import open_sink
        from stream.source import FrameSource, SourceOptions
        from stream.uri import parse_sink, parse_source

        cam = self.camera
        spec = parse_source(cam.source)
        options = SourceOptions(wait_for_source=spec.is_live, source_id=cam.name, live_queue_size=LIVE_QUEUE_FRAMES)
        encoder = EncoderConfig(codec=cam.codec, crf=cam.crf, preset=cam.preset, low_latency=spec.is_live)
        with contextlib.ExitStack() as stack:
            source = FrameSource(spec, options)
            self._source = source
            self.status.source_stats = lambda: source.stats
            stack.callback(source.close)
            if self._stop.is_set():
                return False
            source.start()
            info = source.info
            sink_spec = parse_sink(self._sink_path(attempt), cam.format)

            def open_output() -> Any:
                return open_sink(sink_spec, info, encoder, audio_from=info)

            label = f"camera {cam.name}"
            publish = sink_spec.kind in PUBLISH_KINDS
            sink: Any = RepublishingSink(open_output, label=label) if publish else open_output()
            republishing = sink if isinstance(sink, RepublishingSink) else None
            if info.is_live and cam.fill_gaps:
                sink = GapFiller(sink, info, label=label)
            filler = sink if isinstance(sink, GapFiller) else None
            stack.callback(sink.close)  # flush + trailer + rename, also after an error
            self.status.sink_stats = lambda: {
                "repeated_frames": filler.repeated if filler else 0,
                "publish_dropped": republishing.dropped if republishing else 0,
            }
            density_file = None
            if cam.density_log is not None:
                cam.density_log.parent.mkdir(parents=True, exist_ok=True)
                density_file = stack.enter_context(cam.density_log.open("a"))
            dehazer = self.batcher.attach(cam.name)
            drops_before = self.status.drops

            def on_frame(event: FrameDone) -> None:
                self.status.frame(event, drops_before)
                if density_file is not None and event.density is not None:
                    record = {"pts": event.pts, "time_s": event.time_s, "density": round(event.density, 6)}
                    density_file.write(json.dumps(record) + "\n")
                if self._on_frame is not None:
                    self._on_frame(cam.name, event)

            pipeline = PipelineConfig(guidance=GuidanceCacheConfig(refresh_every=cam.guidance_every),
                                      scale=cam.scale, want_density=True)  # fmt: skip
            logger.info("camera %s: %s -> %s (%dx%d, %s)", cam.name, redact(cam.source), redact(sink_spec.display),
                        info.width, info.height, dehazer.name)  # fmt: skip
            self.status.set(state="running" if attempt == 0 else "restarting")
            try:
                stats = run(source, sink, dehazer, pipeline, stop_event=self._stop, on_frame=on_frame,
                            on_end=sink.write_end)  # fmt: skip
            except Exception:
                if self._stop.is_set():  # the source was closed to end a stop: not a failure
                    return False
                raise
            self.status.set(drops=drops_before + stats.frames_dropped)
            logger.info("camera %s: %d frames, %.1f fps, latency p95 %.0f ms%s", cam.name, stats.frames_out,
                        stats.fps, stats.latency_ms_p95, " (stopped)" if stats.stopped_early else "")  # fmt: skip
            return not stats.stopped_early and not self._stop.is_set()
