"""Reconnect, backoff, deadlines and queue policies of FrameSource with an injected opener (no network)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from stream.errors import SourceLost, SourceOpenError
from stream.pyav_input import RawFrame
from stream.reconnect import PtsRebaser, ReconnectPolicy
from stream.records import VideoInfo
from stream.source import FrameSource, SourceOptions, open_source
from stream.uri import parse_source

TB = Fraction(1, 90000)
STEP = 3600  # 25 fps at 90 kHz
FAST = ReconnectPolicy(initial_s=0.01, cap_s=0.05, jitter=0.0)
DEADLINE_SLACK_S = 1.0  # scheduling slack on 2 shared cores


@dataclass
class FakePacket:
    """Stands in for an av.Packet (only what the source touches)."""

    pts: int | None
    dts: int | None
    time_base: Fraction = Fraction(1, 48000)


class FakeConnection:
    """A connection that yields ``count`` frames from ``start`` then ends, fails, or hangs."""

    def __init__(
        self, start: int, count: int, *, then: str = "end", audio: int = 0, release: threading.Event | None = None
    ) -> None:
        self.info = VideoInfo(8, 6, TB, Fraction(25), "h264", "yuv420p", "tv", "bt709", is_live=True)
        self.trailing_audio: tuple[Any, ...] = ()
        self.corrupt_packets = 0
        self._start, self._count, self._then, self._audio = start, count, then, audio
        self._release = release or threading.Event()
        self.closed = False

    def frames(self, size: tuple[int, int] | None) -> Iterator[RawFrame]:
        for i in range(self._count):
            packets = tuple(FakePacket(i * 960, i * 960) for _ in range(self._audio))
            yield RawFrame(np.full((6, 8, 3), i, np.uint8), self._start + i * STEP, TB, packets)
        if self._then == "hang":
            self._release.wait(30)
        elif self._then == "fail":
            raise ConnectionResetError("camera went away")

    def close(self) -> None:
        self.closed = True


class ScriptedOpener:
    """Returns the scripted connections/errors in order; the last entry repeats."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.calls = 0

    def __call__(self, spec: Any, options: Any, live: bool) -> Any:
        self.calls += 1
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, BaseException):
            raise item
        if callable(item) and not isinstance(item, FakeConnection):
            return item()
        return item


def _live(**kw: Any) -> SourceOptions:
    return SourceOptions(live=True, reconnect=kw.pop("reconnect", FAST), **kw)


def test_backoff_grows_caps_and_jitters() -> None:
    policy = ReconnectPolicy(initial_s=0.5, cap_s=4.0, multiplier=2.0, jitter=0.0, max_attempts=3)
    assert [policy.delay_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    jittery = ReconnectPolicy(initial_s=1.0, jitter=0.2)
    delays = {jittery.delay_s(1, random.Random(seed)) for seed in range(20)}
    assert all(0.8 <= d <= 1.2 for d in delays) and len(delays) > 1
    assert not policy.gives_up(3) and policy.gives_up(4)
    assert not ReconnectPolicy().gives_up(10_000)


def test_rebaser_keeps_file_pts_and_makes_live_monotonic() -> None:
    files = PtsRebaser(rebase=False)
    assert [files(p, TB) for p in (3000, 6600, 10200)] == [3000, 6600, 10200]
    live = PtsRebaser(rebase=True, fps=Fraction(25))
    first = [live(p, TB) for p in (-7200, -3600, 0)]  # RTSP can start negative
    assert first == [0, STEP, 2 * STEP]
    live.new_segment()  # camera reconnected, its clock reset
    assert [live(p, TB) for p in (0, STEP)] == [3 * STEP, 4 * STEP]
    assert live(None, TB) == 5 * STEP
    assert files(10200, TB) == 10201  # a file's colliding PTS still move forward, by one tick


def test_rebaser_keeps_live_timeline_at_frame_rate_through_camera_clock_jumps() -> None:
    """A live camera's clock that steps back, stands still or leaps forward inside one connection (GStreamer's
    rtsp-server seeks its shared pipeline to 0 when a second client sends PLAY) must not freeze the output:
    before, every frame until the clock caught up got the last PTS + 1 tick (104 frames in 4 s at one instant)."""
    live = PtsRebaser(rebase=True, fps=Fraction(25), max_gap_s=10.0)
    camera = [90_000 + i * STEP for i in range(5)]  # 1.0 s .. 1.16 s
    camera += [i * STEP for i in range(5)]  # a second client joined: the clock restarts at 0
    camera += [5 * STEP] * 3  # the clock stands still
    camera += [90_000_000 + i * STEP for i in range(3)]  # leaps forward 1000 s
    camera += [90_000_000 + 3 * STEP + 5 * 90_000]  # a real 5 s hole (under max_gap_s) is kept
    out = [live(p, TB) for p in camera]
    steps = [b - a for a, b in pairwise(out)]
    assert out[0] == 0 and steps == [STEP] * (len(out) - 2) + [STEP + 5 * 90_000], steps
    assert live.clock_jumps == 4  # back to 0, two frames standing still, the leap


def test_live_source_pts_keep_advancing_when_the_camera_clock_steps_back() -> None:
    """The whole FrameSource: a connection whose PTS go back mid-stream gives frames one step apart."""

    class SeekedBack(FakeConnection):
        def frames(self, size: tuple[int, int] | None) -> Iterator[RawFrame]:
            for i, pts in enumerate([90_000 + k * STEP for k in range(20)] + [k * STEP for k in range(30)]):
                yield RawFrame(np.full((6, 8, 3), i % 256, np.uint8), pts, TB, ())

    opener = ScriptedOpener(SeekedBack(0, 0), SourceOpenError("gone"))
    options = _live(live_queue_size=64, reconnect=ReconnectPolicy(initial_s=0.01, max_attempts=0))
    src = FrameSource(parse_source("rtsp://cam/x"), options, opener=opener).start()
    pts = []
    with pytest.raises(SourceLost):
        for frame in src:
            pts.append(frame.pts)
    assert len(pts) == 50
    assert [b - a for a, b in pairwise(pts)] == [STEP] * 49, pts


def test_reconnects_with_monotonic_pts_and_counters() -> None:
    opener = ScriptedOpener(
        FakeConnection(90_000, 4, then="fail"),  # delivers, then the camera dies
        SourceOpenError("cannot connect: Connection refused"),  # server still down
        FakeConnection(0, 4),  # back, with its clock reset to 0
        FakeConnection(500, 4),
    )
    options = _live(live_queue_size=64)  # room for everything: this test is about PTS, not drops
    src = FrameSource(parse_source("rtsp://cam/x"), options, opener=opener).start()
    frames = [next(src) for _ in range(10)]
    src.close()
    pts = [f.pts for f in frames]
    assert pts[0] == 0 and all(b > a for a, b in zip(pts, pts[1:])), pts
    assert [f.index for f in frames] == list(range(10))
    assert src.stats.reconnects >= 2 and opener.calls >= 3
    assert src.stats.state == "ended"


def test_gives_up_after_max_attempts() -> None:
    opener = ScriptedOpener(FakeConnection(0, 3), SourceOpenError("cannot connect: refused"))
    options = _live(live_queue_size=8, reconnect=ReconnectPolicy(initial_s=0.01, jitter=0.0, max_attempts=2))
    src = FrameSource(parse_source("rtsp://cam/x"), options, opener=opener).start()
    got = []
    with pytest.raises(SourceLost, match="lost after 2 reconnect attempts"):  # noqa: PT012
        for frame in src:
            got.append(frame)
    assert len(got) == 3 and src.end is not None and src.end.reason == "error"
    assert opener.calls == 3  # first connection + 2 retries


def test_silent_camera_is_stalled_within_deadline_then_recovers() -> None:
    release = threading.Event()
    opener = ScriptedOpener(
        FakeConnection(0, 2, then="hang", release=release), FakeConnection(0, 50, then="hang", release=release)
    )
    options = _live(read_timeout_s=0.3, reconnect=ReconnectPolicy(initial_s=0.2, jitter=0.0))
    src = FrameSource(parse_source("rtsp://cam/x"), options, opener=opener).start()
    try:
        it = iter(src)
        next(it), next(it)
        t0 = time.monotonic()
        seen = []
        while time.monotonic() - t0 < 0.3 + DEADLINE_SLACK_S and not any(s.state == "stalled" for s in seen):
            seen.append(src.stats)
            time.sleep(0.002)
        stalled = [s for s in seen if s.state == "stalled"]
        assert stalled, f"never reported stalled within the read deadline: {seen[-1]} {len(seen)}"
        assert "no data for" in stalled[0].last_reason
        third = next(it)  # the reconnected camera delivers
        assert third.pts is not None and third.pts > 0 and src.stats.reconnects >= 1
        assert src.stats.stalls == 1
    finally:
        release.set()
        src.close()


def test_open_failure_is_immediate_and_typed() -> None:
    opener = ScriptedOpener(SourceOpenError("cannot connect to rtsp://cam/x: Connection refused"))
    t0 = time.monotonic()
    with pytest.raises(SourceOpenError, match="Connection refused"):
        open_source("rtsp://cam/x", _live(), opener=opener)
    assert time.monotonic() - t0 < DEADLINE_SLACK_S
    assert opener.calls == 1  # no reconnect before the source ever delivered


def test_open_that_hangs_fails_within_open_deadline() -> None:
    release = threading.Event()

    def hang() -> FakeConnection:
        release.wait(30)
        return FakeConnection(0, 1)

    opener = ScriptedOpener(hang)
    t0 = time.monotonic()
    try:
        with pytest.raises(SourceOpenError, match="timed out|did not open"):
            open_source("rtsp://cam/x", _live(open_timeout_s=0.3), opener=opener)
        assert time.monotonic() - t0 < 0.3 + DEADLINE_SLACK_S
    finally:
        release.set()


def test_wait_for_source_keeps_retrying_until_it_appears() -> None:
    down = SourceOpenError("cannot connect: refused")
    release = threading.Event()
    opener = ScriptedOpener(down, down, down, FakeConnection(0, 3, then="hang", release=release))
    try:
        with open_source("rtsp://cam/x", _live(wait_for_source=True, live_queue_size=8), opener=opener) as src:
            assert next(iter(src)).pts == 0
            assert opener.calls == 4 and src.stats.reconnects == 3
    finally:
        release.set()


def test_live_keeps_latest_counts_drops_and_keeps_audio() -> None:
    opener = ScriptedOpener(FakeConnection(0, 40, audio=2), SourceOpenError("gone"))
    options = _live(live_queue_size=2, reconnect=ReconnectPolicy(initial_s=0.01, max_attempts=0))
    src = FrameSource(parse_source("rtsp://cam/x"), options, opener=opener).start()
    deadline = time.monotonic() + 5
    while src.stats.decoded < 40 and time.monotonic() < deadline:
        time.sleep(0.01)  # a slow consumer: read nothing while the camera delivers
    frames = []
    with pytest.raises(SourceLost):
        for frame in src:
            frames.append(frame)
    stats = src.stats
    assert stats.drops > 0 and len(frames) <= 3
    assert len(frames) + stats.drops == stats.decoded == 40
    assert frames[-1].index == 39  # the latest frame survived
    audio = sum(len(f.packets) for f in frames) + len(src.end.packets)
    assert audio == 80  # audio of dropped frames moved on, none lost


def test_file_mode_is_lossless_with_backpressure() -> None:
    opener = ScriptedOpener(FakeConnection(0, 30))
    options = SourceOptions(live=False, queue_size=2)
    with FrameSource(parse_source("clip.mp4"), options, opener=opener).start() as src:
        got = []
        for frame in src:
            time.sleep(0.002)  # slower than the decoder
            got.append(frame.pts)
        assert got == [i * STEP for i in range(30)]
        assert src.stats.drops == 0 and src.end is not None and src.end.reason == "eof"


def test_stats_never_holds_the_source_lock_while_waiting_for_the_queue() -> None:
    """The reader holds the queue's lock while it waits in ``put`` and beats the source's heartbeat (the source's
    lock inside it); ``stats`` (the engine reads it every frame) must not take the two the other way round.
    It did, and a 4-camera serve run froze for good."""
    src = FrameSource(parse_source("clip.mp4"), _live(live_queue_size=2))
    stats_read, beaten = threading.Event(), threading.Event()
    with src._queue._cond:  # the reader inside put, the queue full
        threading.Thread(target=lambda: (src.stats, stats_read.set()), daemon=True).start()
        time.sleep(0.1)  # stats is at the queue's lock by now
        threading.Thread(target=lambda: (src._beat(), beaten.set()), daemon=True).start()
        heartbeat_went_through = beaten.wait(2.0)
    assert heartbeat_went_through  # with the old order: stats holds the source lock, the heartbeat waits on it
    assert stats_read.wait(2.0)
