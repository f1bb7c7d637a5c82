"""Pure logic for live sources: reconnect backoff and PTS re-basing across reconnects. No I/O."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from fractions import Fraction

DEFAULT_LIVE_FPS = Fraction(25)  # step used to continue PTS when a live source does not state its rate


@dataclass(frozen=True)
class ReconnectPolicy:
    """Exponential backoff with jitter and a cap, for live sources that drop."""

    initial_s: float = 0.5  # first wait after a failure
    cap_s: float = 30.0  # longest wait
    multiplier: float = 2.0  # growth per failed attempt
    jitter: float = 0.2  # +- fraction of the wait, so many cameras do not reconnect in lockstep
    max_attempts: int | None = None  # failed attempts in a row before giving up; None = forever
    reset_after_s: float = 10.0  # a connection healthy this long resets the attempt count

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Wait before reconnect attempt ``attempt`` (1-based).

        Args:
            attempt: 1 for the first retry after a failure.
            rng: Random source for the jitter (tests pass a seeded one).

        Returns:
            Seconds to wait, in ``[0, cap_s * (1 + jitter)]``.
        """
        steps = max(0, attempt - 1)
        # cap reached after log(cap / initial) / log(multiplier) steps; past it the power would overflow a float
        # (after ~1024 attempts: a camera down for hours must keep retrying, not crash the supervisor)
        if self.initial_s <= 0 or self.multiplier <= 1:
            base = min(self.cap_s, max(0.0, self.initial_s) * min(1.0, self.multiplier) ** steps)
        elif self.initial_s >= self.cap_s or steps >= math.log(self.cap_s / self.initial_s, self.multiplier):
            base = self.cap_s
        else:
            base = self.initial_s * self.multiplier**steps
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1.0 + spread))

    def gives_up(self, attempt: int) -> bool:
        """True when ``attempt`` exceeds ``max_attempts``."""
        return self.max_attempts is not None and attempt > self.max_attempts


class PtsRebaser:
    """Maps per-connection PTS to one monotonic output timeline.

    Files keep their PTS untouched (passthrough keeps timing). Live sources start at 0, and every new
    connection (``new_segment``) continues one frame step after the last output PTS, whatever the
    camera's clock did (negative starts, resets on reconnect; go2rtc PR #1943, MediaMTX #1307).

    A live camera's clock can also jump inside one connection while frames keep coming (GStreamer's
    rtsp-server seeks a shared, seekable test pipeline back to 0 when a second client sends PLAY, and the
    first client's RTP clock steps back with it). A live frame whose PTS goes back or stands still,
    or leaps forward by more than ``max_gap_s``, starts a new segment one frame step after the last output
    PTS (counted in ``clock_jumps``): the timeline keeps advancing at the frame rate instead of crawling
    one tick per frame until the camera's clock catches up, or leaving a hole.
    """

    def __init__(self, *, rebase: bool, fps: Fraction | None = None, max_gap_s: float | None = None) -> None:
        self._rebase = rebase
        self._fps = fps
        # live: a forward PTS step longer than this inside one connection is a clock jump, not elapsed time
        self._max_gap_s = max_gap_s
        self.clock_jumps = 0  # live frames that re-based the timeline inside a connection
        self.time_base: Fraction | None = None  # output time base, fixed by the first frame
        self._last: int | None = None  # last output pts
        self._offset: int = 0  # added to the rescaled input pts of the current segment
        self._segment_start = True

    def new_segment(self) -> None:
        """Call when a new connection starts delivering."""
        self._segment_start = True

    @property
    def step(self) -> int:
        """One frame duration in the output time base (at least 1)."""
        assert self.time_base is not None
        fps = self._fps or DEFAULT_LIVE_FPS
        return max(1, round(1 / (fps * self.time_base)))

    def offset_s(self) -> Fraction:
        """Current segment's shift in seconds (applied to audio packets of the same connection)."""
        return Fraction(0) if self.time_base is None else self._offset * self.time_base

    def __call__(self, pts: int | None, time_base: Fraction) -> int:
        """Output PTS for a frame with input ``pts`` in ``time_base``.

        Args:
            pts: Input PTS, None when the demuxer gave none.
            time_base: Input time base of this connection.

        Returns:
            Output PTS in ``self.time_base``, strictly greater than the previous one.
        """
        if self.time_base is None:
            self.time_base = time_base
        if pts is None:
            out = 0 if self._last is None else self._last + self.step
            self._segment_start = False
            self._last = out
            return out
        scaled = round(pts * time_base / self.time_base)
        if self._segment_start:
            self._segment_start = False
            if self._rebase:
                target = 0 if self._last is None else self._last + self.step
                self._offset = target - scaled
        out = scaled + self._offset
        if self._last is not None and self._rebase and self._is_jump(out - self._last):
            self.clock_jumps += 1
            self._offset = self._last + self.step - scaled
            out = scaled + self._offset
        if self._last is not None and out <= self._last:  # files: colliding PTS still move forward
            out = self._last + 1
        self._last = out
        return out

    def _is_jump(self, delta: int) -> bool:
        """True when a live frame ``delta`` ticks after the last output is a camera clock jump."""
        if delta <= 0:
            return True
        assert self.time_base is not None
        return self._max_gap_s is not None and delta * self.time_base > Fraction(self._max_gap_s)
