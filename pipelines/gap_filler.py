"""Always-on output for live sources: repeat the last frame while the camera is away.

A recorder downstream (Frigate's watchdog restarts after 20 s without frames, MediaMTX readers drop a
silent publisher) must see a steady stream even while our camera reconnects. ``GapFiller`` wraps a sink:
when no frame has been written for ``GapFillConfig.after_s``, a background thread writes the last frame
again at the nominal rate, back-filling the silent time so the output clock keeps pace with the wall
clock. When the camera returns, its frames (re-based by the source to continue right after its own last
frame) are shifted to follow the repeated ones, so output PTS stay strictly increasing without a hole,
and their audio packets move by the same amount.

Example:
    sink = GapFiller(open_sink("out.mp4", info), info)
    run(source, sink, dehazer, config, on_end=sink.write_end)
    sink.close()
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

from stream.records import EndOfStream, Frame, VideoInfo

logger = logging.getLogger(__name__)

DEFAULT_FILL_FPS = Fraction(25)  # repeat rate when the source does not state its frame rate
JOIN_S = 5.0  # how long close() waits for the filler thread


class GapFillError(ValueError):
    """A gap-fill setting out of range."""


@dataclass(frozen=True)
class GapFillConfig:
    """When and how fast the last frame is repeated."""

    after_s: float = 1.0  # silence (no frame written) before repeating starts; the silent time is back-filled
    fps: Fraction | None = None  # repeat rate; None = the source's nominal rate (else DEFAULT_FILL_FPS)
    max_fill_s: float | None = None  # stop repeating after this long without a real frame (None = forever)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.after_s) and self.after_s > 0):
            raise GapFillError(f"gap fill delay must be > 0 s, got {self.after_s}")
        if self.fps is not None and self.fps <= 0:
            raise GapFillError(f"gap fill rate must be > 0, got {self.fps}")
        if self.max_fill_s is not None and not (math.isfinite(self.max_fill_s) and self.max_fill_s > 0):
            raise GapFillError(f"gap fill limit must be > 0 s, got {self.max_fill_s}")


class Sink(Protocol):
    """What is wrapped: ``stream.sink.FrameSink`` or a test double."""

    def write(self, frame: Frame) -> None: ...

    def close(self) -> None: ...


class GapFiller:
    """Sink wrapper that repeats the last frame while no new one arrives (thread-safe)."""

    def __init__(self, sink: Sink, info: VideoInfo, config: GapFillConfig | None = None, *, label: str = "") -> None:
        self.inner = sink
        self._prefix = f"{label}: " if label else ""  # e.g. the camera's name, in front of log lines
        self.config = config or GapFillConfig()
        fps = self.config.fps or info.fps or DEFAULT_FILL_FPS
        self._period_s = float(1 / fps)
        self._fps = fps
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last: Frame | None = None  # last frame written (real or repeated), output pts
        self._last_real_s = 0.0  # monotonic time of the last real frame
        self._emitted_s = 0.0  # output clock: monotonic time the last written frame stands for
        self._shift = 0  # added to real frames' pts (in their time base) after a filled gap
        self._error: BaseException | None = None
        self.repeated = 0  # frames written by the filler
        self.gaps = 0  # silent periods that were filled
        self._filling = False
        self._thread = threading.Thread(target=self._loop, name="gap-filler", daemon=True)
        self._thread.start()

    @property
    def stats(self) -> Any:
        """The wrapped sink's stats (``FrameSink.stats``), when it has any."""
        return getattr(self.inner, "stats", None)

    def _step(self, frame: Frame) -> int:
        return max(1, round(1 / (self._fps * frame.time_base)))

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def write(self, frame: Frame) -> None:
        """Write a real frame, shifted to follow any repeated frames.

        Raises:
            Whatever the wrapped sink raises, including an error the filler thread met.
        """
        with self._lock:
            self._raise_pending()
            if frame.pts is not None and self._last is not None and self._last.pts is not None:
                if frame.time_base == self._last.time_base:
                    out = frame.pts + self._shift
                    if out <= self._last.pts:
                        self._shift = self._last.pts + self._step(frame) - frame.pts
                else:  # a time-base change (not seen from stream.source): keep the wrapped sink's rescaling
                    self._shift = 0
            if self._shift and frame.pts is not None:
                frame = dataclasses.replace(frame, pts=frame.pts + self._shift)
                _shift_packets(frame.packets, self._shift * frame.time_base)
            self.inner.write(frame)
            now = time.monotonic()
            if self._filling:
                logger.info("%ssource back: %d frames repeated so far", self._prefix, self.repeated)
                self._filling = False
            self._last, self._last_real_s, self._emitted_s = frame, now, now

    def write_end(self, end: EndOfStream | None) -> None:
        """Pass the trailing audio on (shifted like the frames)."""
        write_end = getattr(self.inner, "write_end", None)
        with self._lock:
            self._raise_pending()
            if end is not None and self._shift:
                _shift_packets(end.packets, self._shift * (self._last.time_base if self._last else Fraction(0)))
            if write_end is not None:
                write_end(end)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self._period_s / 2):
                self._fill_due()
        except BaseException as exc:  # worker-thread boundary: re-raised by the next write/close
            logger.debug("gap filler failed: %s", exc, exc_info=True)
            with self._lock:
                self._error = exc

    def _fill_due(self) -> None:
        with self._lock:
            last = self._last
            if last is None or last.pts is None:
                return
            now = time.monotonic()
            silent_s = now - self._last_real_s
            if silent_s < self.config.after_s:
                return
            if self.config.max_fill_s is not None and silent_s > self.config.after_s + self.config.max_fill_s:
                return
            if not self._filling:
                self._filling = True
                self.gaps += 1
                logger.warning("%sno frames for %.1f s: repeating the last frame until the source returns",
                               self._prefix, silent_s)  # fmt: skip
            due = int((now - self._emitted_s) / self._period_s)
            step = self._step(last)
            for _ in range(due):
                assert last.pts is not None
                last = dataclasses.replace(last, pts=last.pts + step, packets=())
                self.inner.write(last)
                self.repeated += 1
            self._last = last
            self._emitted_s += due * self._period_s

    def close(self) -> None:
        """Stop repeating, then close the wrapped sink (flush, trailer, rename).

        Raises:
            Whatever the wrapped sink's close raises, or an error the filler thread met.
        """
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(JOIN_S)
        try:
            self.inner.close()
        finally:
            with self._lock:
                self._raise_pending()

    def __enter__(self) -> GapFiller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shift_packets(packets: tuple[Any, ...], shift_s: Fraction) -> None:
    """Move audio packets (av.Packet-like: pts, dts, time_base) by ``shift_s`` seconds, in place."""
    for packet in packets:
        time_base = getattr(packet, "time_base", None)
        if not time_base:
            continue
        ticks = round(shift_s / time_base)
        if getattr(packet, "pts", None) is not None:
            packet.pts += ticks
        if getattr(packet, "dts", None) is not None:
            packet.dts += ticks
