"""Publish outputs (rtsp/rtmp/srt) that survive their server going away: reopen with backoff, then go on.

``RepublishingSink`` wraps the sink factory. The first open is the caller's (its ``SinkOpenError`` is
bad input). When a write fails later (``EncodeError``: the server restarted, the network dropped) the
broken output is abandoned, frames written while it is down are dropped and counted, and the output is
reopened with jittered exponential backoff, so the stream comes back on its own (a new encoder starts
with a keyframe, which readers need to resume). Files are not wrapped: a failed file write is an error.

Example:
    sink = RepublishingSink(lambda: open_sink("rtsp://mediamtx:8554/out", info))
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from stream.errors import EncodeError, SinkOpenError, StreamError
from stream.reconnect import ReconnectPolicy
from stream.records import EndOfStream, Frame

logger = logging.getLogger(__name__)

PUBLISH_KINDS = frozenset({"rtsp", "rtmp", "srt"})  # SinkSpec kinds that are worth republishing
DEFAULT_REPUBLISH = ReconnectPolicy(initial_s=0.5, cap_s=10.0, reset_after_s=10.0)


class RepublishingSink:
    """A publish sink that reopens itself after the target goes away."""

    def __init__(
        self,
        open_sink: Callable[[], Any],
        policy: ReconnectPolicy = DEFAULT_REPUBLISH,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        label: str = "",
    ) -> None:
        """Open the first output at once.

        Args:
            open_sink: Returns a fresh, open sink (``stream.sink.open_sink`` with its arguments bound).
            policy: Backoff between reopen attempts; ``max_attempts`` failed reopens in a row give up.
            rng: Jitter source (tests pass a seeded one).
            clock: Monotonic seconds (tests pass a fake).
            label: put in front of log lines (e.g. the camera's name).

        Raises:
            SinkOpenError: The first open failed.
        """
        self._open = open_sink
        self._policy = policy
        self._rng = rng or random.Random()
        self._clock = clock
        self._sink: Any = open_sink()
        self.display = str(getattr(getattr(self._sink, "spec", None), "display", "output"))
        self._prefix = f"{label}: " if label else ""
        self._attempt = 0
        self._next_try_s = 0.0
        self._down_reason = ""
        self.dropped = 0  # frames not published while the target was away
        self.republished = 0  # successful reopens
        self.failures = 0  # writes or reopens that failed

    @property
    def is_up(self) -> bool:
        return self._sink is not None

    @property
    def stats(self) -> Any:
        return None if self._sink is None else getattr(self._sink, "stats", None)

    def _schedule(self) -> None:
        self._attempt += 1
        if self._policy.gives_up(self._attempt):
            raise EncodeError(
                f"{self.display}: publish target still gone after {self._attempt - 1} attempts ({self._down_reason})"
            )
        self._next_try_s = self._clock() + self._policy.delay_s(self._attempt, self._rng)

    def _lost(self, error: StreamError) -> None:
        self.failures += 1
        self._down_reason = str(error)
        logger.warning("%s%s; republishing with backoff", self._prefix, error)
        broken, self._sink = self._sink, None
        with contextlib.suppress(StreamError, OSError):
            broken.close()
        self._schedule()

    def _reopen(self) -> bool:
        if self._clock() < self._next_try_s:
            return False
        try:
            self._sink = self._open()
        except SinkOpenError as exc:
            self.failures += 1
            self._down_reason = str(exc)
            logger.debug("republish attempt %d failed: %s", self._attempt, exc)
            self._schedule()
            return False
        self.republished += 1
        self._attempt = 0
        logger.warning("%s%s: publishing again (%d frames were dropped meanwhile)", self._prefix, self.display,
                       self.dropped)  # fmt: skip
        return True

    def write(self, frame: Frame) -> None:
        """Publish a frame, or count it as dropped while the target is away.

        Raises:
            EncodeError: The target stayed away past ``policy.max_attempts`` reopen attempts.
        """
        if self._sink is None and not self._reopen():
            self.dropped += 1
            return
        try:
            self._sink.write(frame)
        except EncodeError as exc:
            self.dropped += 1
            self._lost(exc)

    def write_end(self, end: EndOfStream | None) -> None:
        if self._sink is None:
            return
        try:
            self._sink.write_end(end)
        except EncodeError as exc:
            self._lost(exc)

    def close(self) -> None:
        """Close the current output (nothing to do while it is down)."""
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.close()

    def __enter__(self) -> RepublishingSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
