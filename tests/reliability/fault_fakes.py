"""Scripted live cameras for the fault tests: paced frames, drops, outages (no network)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np

from stream.errors import SourceOpenError
from stream.pyav_input import RawFrame
from stream.records import VideoInfo

TB = Fraction(1, 90000)
FPS = 25
STEP = 90000 // FPS  # one frame at 90 kHz


class PacedConnection:
    """A live connection that yields ``count`` frames at ``fps`` (camera clock from 0), then fails or ends."""

    def __init__(self, count: int, *, size: tuple[int, int] = (32, 24), value: int = 0, then: str = "fail",
                 fps: float = FPS) -> None:  # fmt: skip
        self.info = VideoInfo(size[0], size[1], TB, Fraction(FPS), "h264", "yuv420p", "tv", "bt709", is_live=True)
        self.trailing_audio: tuple[Any, ...] = ()
        self.corrupt_packets = 0
        self._count, self._size, self._value, self._then, self._period_s = count, size, value, then, 1 / fps

    def frames(self, size: tuple[int, int] | None) -> Iterator[RawFrame]:
        width, height = self._size
        for i in range(self._count):
            time.sleep(self._period_s)
            yield RawFrame(np.full((height, width, 3), (self._value + i) % 256, np.uint8), i * STEP, TB)
        if self._then == "fail":
            raise ConnectionResetError("camera went away")

    def close(self) -> None:
        pass


class OutageOpener:
    """First connection at once; after it is lost, refuses (SourceOpenError) for ``outage_s``; then the next one."""

    def __init__(self, *connections: PacedConnection, outage_s: float) -> None:
        self._connections = list(connections)
        self._outage_s = outage_s
        self._lost_at: float | None = None
        self._lock = threading.Lock()
        self.calls = 0
        self.refused = 0

    def __call__(self, spec: Any, options: Any, live: bool) -> PacedConnection:
        with self._lock:
            self.calls += 1
            if self.calls > 1:
                self._lost_at = time.monotonic() if self._lost_at is None else self._lost_at
                if time.monotonic() - self._lost_at < self._outage_s:
                    self.refused += 1
                    raise SourceOpenError("camera unreachable")
            if not self._connections:
                raise SourceOpenError("script exhausted")
            return self._connections.pop(0)
