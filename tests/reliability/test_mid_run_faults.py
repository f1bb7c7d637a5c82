"""Faults in the middle of a run: corrupt packets, camera outages, resolution changes, slow sinks, full disks,
publish targets that restart. The table in docs/reliability.md names these tests."""

from __future__ import annotations

import errno
import itertools
import json
import os
import select
import subprocess
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import reliability_media as media
from click.testing import CliRunner
from fault_fakes import FPS, OutageOpener, PacedConnection

from cli import main
from cliphaze.baselines.none import PassthroughDehazer
from pipelines.config import PipelineConfig
from pipelines.gap_filler import GapFillConfig, GapFiller
from pipelines.runner import run
from stream.encoder import EncoderConfig
from stream.errors import EncodeError, SinkOpenError
from stream.reconnect import ReconnectPolicy
from stream.records import Frame, VideoInfo
from stream.republish import RepublishingSink
from stream.sink import open_sink
from stream.source import FrameSource, SourceOptions, open_source
from stream.uri import parse_source

PERIOD_S = 1 / FPS
FAST_RECONNECT = ReconnectPolicy(initial_s=0.05, cap_s=0.2, jitter=0.0)
TIMING_SLACK_S = 0.5  # output duration vs wall-clock duration, on 2 shared cores
MKV_TICK_S = 0.001  # Matroska stores milliseconds
MAX_DROP_STEP_S = 5 * PERIOD_S  # a live run may drop a few frames in a row when the CPU is busy


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout + result.stderr


def live_source(opener: Any, **options: Any) -> FrameSource:
    opts = SourceOptions(live=True, reconnect=FAST_RECONNECT, **options)
    return FrameSource(parse_source("rtsp://camera.invalid/x"), opts, opener=opener).start()


# --- corrupt packets -------------------------------------------------------------------------------------


def damage_ts(clean: Path, path: Path) -> Path:
    """Drop TS packets at 1/3 and 2/3 (continuity errors, as on a lossy link) and flip bytes in the middle."""
    data = clean.read_bytes()
    packets = [data[i : i + 188] for i in range(0, len(data), 188)]
    third = len(packets) // 3
    kept = packets[:third] + packets[third + 3 : 2 * third] + packets[2 * third + 3 :]
    damaged = bytearray(b"".join(kept))
    middle = len(damaged) // 2 // 188 * 188
    for offset in range(middle, middle + 10 * 188, 188):
        damaged[offset + 100] ^= 0xFF  # payload bytes only: the TS headers stay valid
    path.write_bytes(bytes(damaged))
    return path


def test_corrupt_packets_are_skipped_counted_and_the_run_continues(tmp_path: Path) -> None:
    clean = media.make_clip(tmp_path / "clean.ts", 4.0, "160x120")
    damaged = damage_ts(clean, tmp_path / "damaged.ts")
    out, stats_path = tmp_path / "out.mp4", tmp_path / "stats.json"
    code, text = cli("dehaze", str(damaged), "-o", str(out), "--model", "none", "--stats", str(stats_path))
    assert code == 0, text
    stats = json.loads(stats_path.read_text())
    assert stats["corrupt_packets"] >= 1 and "corrupt video packets were skipped" in text
    total = int(4.0 * FPS)
    assert total - 10 <= stats["frames_out"] < total  # a few frames lost, not the rest of the file
    times = media.frame_times(out)
    assert len(times) == stats["frames_out"] and times[-1] > 3.5  # it went on to the end


# --- camera outage: reconnect + always-on output --------------------------------------------------------


def test_camera_drop_and_return_keeps_output_timing(tmp_path: Path) -> None:
    opener = OutageOpener(PacedConnection(25, value=10), PacedConnection(25, value=100), outage_s=1.5)
    source = live_source(opener, read_timeout_s=1.0)
    assert source.info is not None
    out = tmp_path / "always_on.mkv"
    sink = GapFiller(open_sink(out, source.info, EncoderConfig(preset="ultrafast")), source.info,
                     GapFillConfig(after_s=0.3))  # fmt: skip
    started = time.monotonic()
    try:
        stats = run(source, sink, PassthroughDehazer(), PipelineConfig(max_frames=50), on_end=sink.write_end)
    finally:
        wall_s = time.monotonic() - started
        sink.close()
        source.close()
    assert stats.frames_out == 50 and stats.reconnects >= 1 and opener.refused >= 1
    assert sink.gaps >= 1 and sink.repeated >= int(1.5 * FPS) - 5
    times = media.frame_times(out)
    assert len(times) == 50 + sink.repeated
    steps = np.diff(times)
    assert steps.min() > 0 and steps.max() <= PERIOD_S + MKV_TICK_S  # no hole, no burst: a steady 25 fps
    assert abs((times[-1] - times[0]) - wall_s) < TIMING_SLACK_S + PERIOD_S * 2  # output time follows the clock
    with av.open(str(out)) as container:  # the repeated frames show the last frame before the outage
        values = [int(f.to_ndarray(format="rgb24").mean().round()) for f in container.decode(video=0)]
    repeated = values[25 : 25 + sink.repeated - 5]
    assert repeated and max(abs(v - values[24]) for v in repeated) <= 2


def test_gap_filler_is_idle_while_frames_flow(tmp_path: Path) -> None:
    opener = OutageOpener(PacedConnection(30, then="end"), outage_s=0.0)
    source = live_source(opener)
    assert source.info is not None
    out = tmp_path / "steady.mkv"
    sink = GapFiller(open_sink(out, source.info, EncoderConfig(preset="ultrafast")), source.info)
    try:
        run(source, sink, PassthroughDehazer(), PipelineConfig(max_frames=30), on_end=sink.write_end)
    finally:
        sink.close()
        source.close()
    assert sink.repeated == 0 and len(media.frame_times(out)) == 30


# --- resolution changes -----------------------------------------------------------------------------------


def test_live_resolution_change_is_scaled_to_the_first_size(tmp_path: Path) -> None:
    two_sizes = media.make_two_sizes(tmp_path / "two_sizes.ts")
    with open_source(str(two_sizes), SourceOptions(live=True)) as source:  # a live file "reconnects" at its end
        shapes = [frame.data.shape for frame in itertools.islice(source, 30)]
    assert shapes == [(64, 96, 3)] * 30  # 15 frames were 128x80 in the input


def test_file_resolution_change_does_not_crash(tmp_path: Path) -> None:
    two_sizes = media.make_two_sizes(tmp_path / "two_sizes.ts")
    out, stats_path = tmp_path / "out.mp4", tmp_path / "s.json"
    code, text = cli("dehaze", str(two_sizes), "-o", str(out), "--model", "dcp", "--stats", str(stats_path))
    assert code == 0, text
    frames_out = json.loads(stats_path.read_text())["frames_out"]
    assert 28 <= frames_out <= 30 and media.count_frames(out) == frames_out  # the join may break one packet
    with av.open(str(out)) as container:
        assert {(f.width, f.height) for f in container.decode(video=0)} == {(96, 64)}


# --- slow sink ---------------------------------------------------------------------------------------------


class SlowSink:
    """Blocks on some writes for longer than the source's read deadline."""

    def __init__(self, block_s: float, every: int) -> None:
        self.block_s, self.every = block_s, every
        self.frames: list[Frame] = []

    def write(self, frame: Frame) -> None:
        if len(self.frames) % self.every == self.every - 1:
            time.sleep(self.block_s)
        self.frames.append(frame)


@pytest.mark.slow
def test_slow_sink_does_not_make_a_live_source_look_dead() -> None:
    read_timeout_s = 0.4
    opener = OutageOpener(PacedConnection(1000, then="end"), outage_s=0.0)  # still streaming when the run stops
    source = live_source(opener, read_timeout_s=read_timeout_s)
    sink = SlowSink(block_s=3 * read_timeout_s, every=10)
    try:
        stats = run(source, sink, PassthroughDehazer(), PipelineConfig(max_frames=75))
    finally:
        source.close()
    assert source.stats.stalls == 0 and source.stats.reconnects == 0 and opener.calls == 1
    assert stats.frames_dropped > 0  # live: the backlog was dropped instead of stalling the camera
    assert all(b.pts > a.pts for a, b in zip(sink.frames, sink.frames[1:]))


def test_slow_sink_with_a_file_source_is_lossless(good_mp4: Path) -> None:
    source = open_source(str(good_mp4), SourceOptions(read_timeout_s=0.2, queue_size=1))
    sink = SlowSink(block_s=0.6, every=8)
    try:
        stats = run(source, sink, PassthroughDehazer(), PipelineConfig(queue_depth=1))
    finally:
        source.close()
    assert stats.frames_out == 25 and stats.frames_dropped == 0 and source.stats.stalls == 0


# --- disk full -------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 300 KiB tmpfs (needs root and mount permission; skipped otherwise, the simulated test still runs)."""
    folder = tmp_path / "tiny_disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(folder)], check=False,
                             capture_output=True, timeout=30)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True, timeout=30)


@pytest.mark.slow
def test_disk_full_is_one_clear_error_and_the_output_stays_playable(tmp_path: Path, tiny_disk: Path) -> None:
    noisy = media.make_clip(tmp_path / "noisy.mp4", 4.0, "320x240", ("-vf", "noise=alls=100:allf=t", "-crf", "10"))
    out = tiny_disk / "out.mp4"
    code, text = cli("dehaze", str(noisy), "-o", str(out), "--model", "none", "--crf", "1", "--gop", "0.2")
    lines = [line for line in text.splitlines() if line.startswith("Error: ")]
    assert code == 1 and len(lines) == 1 and "No space left on device" in lines[0], text
    assert "Traceback" not in text
    assert out.exists() and not Path(str(out) + ".part").exists()
    assert media.count_frames(out) >= 1  # what reached the disk decodes


class _FullDisk:
    """Proxy of an av output container whose writes fail with ENOSPC after ``budget`` packets."""

    def __init__(self, container: Any, budget: int) -> None:
        self._container, self._budget = container, budget

    def mux(self, packets: Any) -> None:
        packets = packets if isinstance(packets, list) else [packets]
        for packet in packets:
            if self._budget <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._budget -= 1
            self._container.mux(packet)

    def close(self) -> None:
        self._container.close()


def test_disk_full_simulated(tmp_path: Path, good_mp4: Path) -> None:
    """Same contract without root: ENOSPC from the muxer is an EncodeError; the renamed file decodes."""
    out = tmp_path / "out.mp4"
    with open_source(str(good_mp4)) as source:
        assert source.info is not None
        sink = open_sink(out, source.info, EncoderConfig(preset="ultrafast", gop_s=0.2))
        sink._container = _FullDisk(sink._container, budget=12)  # type: ignore[attr-defined]
        with pytest.raises(EncodeError, match="No space left on device"):
            run(source, sink, PassthroughDehazer(), PipelineConfig())
        with pytest.raises(EncodeError):
            sink.close()
    assert out.exists() and not Path(str(out) + ".part").exists()
    assert 1 <= media.count_frames(out) <= 12


# --- publish target goes away and comes back -------------------------------------------------------------


def _listen(url: str, received: list[int], limit: int | None) -> None:
    with av.open(url, options={"rtsp_flags": "listen", "listen_timeout": "20"}) as container:
        for frame in container.decode(video=0):
            received.append(frame.pts)
            if limit is not None and len(received) >= limit:
                return


@pytest.mark.slow
def test_rtsp_publish_target_restart_republishes() -> None:
    url = f"rtsp://127.0.0.1:{_free_port()}/live"
    first: list[int] = []
    second: list[int] = []
    listener = threading.Thread(target=_listen, args=(url, first, 20), daemon=True)
    listener.start()
    info = VideoInfo(96, 64, Fraction(1, FPS), Fraction(FPS), "h264", "yuv420p", "tv", "bt709", is_live=True)
    config = EncoderConfig(preset="ultrafast", low_latency=True)
    deadline = time.monotonic() + 10
    sink = None
    while sink is None:  # the listener needs a moment to bind
        try:
            sink = RepublishingSink(lambda: open_sink(url, info, config), ReconnectPolicy(initial_s=0.2, cap_s=1.0))
        except SinkOpenError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    restarted = None
    try:
        for i in range(150):
            sink.write(Frame(np.full((64, 96, 3), i % 256, np.uint8), i, info.time_base, i))
            time.sleep(PERIOD_S)
            if restarted is None and not listener.is_alive():  # the target went away: bring it back later
                time.sleep(0.5)
                restarted = threading.Thread(target=_listen, args=(url, second, None), daemon=True)
                restarted.start()
    finally:
        sink.close()
    assert restarted is not None
    restarted.join(15)
    assert len(first) == 20
    assert sink.failures >= 1 and sink.republished >= 1 and sink.dropped >= 1
    assert len(second) >= 50  # publishing resumed into the restarted server


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.rtsp
def test_cli_camera_restart_output_has_no_gap(tmp_path: Path, rtsp_camera) -> None:
    """End to end: the GStreamer camera is stopped and restarted mid-run; cliphaze reconnects and the
    recording keeps a steady 25 fps timeline (the last frame repeated while the camera was away)."""
    out, stats_path = tmp_path / "cam.mkv", tmp_path / "s.json"
    proc = media.cli_process("dehaze", rtsp_camera.url, "-o", str(out), "--model", "none", "--max-frames", "200",
                             "--stats", str(stats_path))  # fmt: skip
    assert proc.stderr is not None
    log = []
    while not log or "dehazing" not in log[-1]:  # the run has started (cli logs it at normal verbosity)
        ready, _, _ = select.select([proc.stderr], [], [], 60)
        assert ready and proc.poll() is None, "".join(log)
        log.append(proc.stderr.readline().decode())
    time.sleep(1.0)  # about 25 frames in
    rtsp_camera.stop()
    time.sleep(2.0)
    rtsp_camera.start()
    _, err = proc.communicate(timeout=120)
    text = "".join(log) + err.decode()
    assert proc.returncode == 0, text
    stats = json.loads(stats_path.read_text())
    assert stats["reconnects"] >= 1 and "repeating the last frame" in text, text
    times = media.frame_times(out)
    assert len(times) > stats["frames_out"] + FPS  # at least a second of repeated frames
    steps = np.diff(times)
    # the 3-4 s outage left no hole; longer steps only where the live policy dropped a frame under load
    assert steps.min() > 0 and steps.max() <= MAX_DROP_STEP_S, steps.max()
    assert int(np.sum(steps > PERIOD_S + MKV_TICK_S)) <= stats["frames_dropped"]


class _FlakyTarget:
    """Fake publish sinks: the n-th opened one fails on its ``fail_after``-th write; opens can be refused."""

    def __init__(self, fail_after: int) -> None:
        self.fail_after, self.opened, self.refuse, self.written = fail_after, 0, False, 0

    def open(self) -> Any:
        if self.refuse:
            raise SinkOpenError("connection refused")
        self.opened += 1
        target = self

        class _Sink:
            writes = 0

            def write(self, frame: Frame) -> None:
                self.writes += 1
                if self.writes > target.fail_after:
                    raise EncodeError("writing rtsp://pub:***@h/x failed: Broken pipe")
                target.written += 1

            def close(self) -> None:
                raise EncodeError("finishing failed")  # a broken output may fail to close too

        return _Sink()


def test_republish_backoff_and_give_up_with_a_fake_clock() -> None:
    now = [0.0]
    target = _FlakyTarget(fail_after=3)
    frame = Frame(np.zeros((2, 2, 3), np.uint8), 0, Fraction(1, 25), 0)
    policy = ReconnectPolicy(initial_s=1.0, cap_s=4.0, jitter=0.0, max_attempts=3)
    sink = RepublishingSink(target.open, policy, clock=lambda: now[0])
    for _ in range(4):
        sink.write(frame)  # the 4th write breaks the output
    assert not sink.is_up and sink.dropped == 1 and sink.failures == 1
    sink.write(frame)  # before the 1 s backoff: dropped, no reopen
    assert target.opened == 1 and sink.dropped == 2
    now[0] = 1.0
    sink.write(frame)  # reopened and written
    assert sink.is_up and sink.republished == 1 and target.opened == 2 and target.written == 4
    for _ in range(3):
        sink.write(frame)  # breaks again on the 4th write of this output
    target.refuse = True
    now[0] = 3.0
    sink.write(frame)  # attempt 2 refused
    now[0] = 10.0
    sink.write(frame)  # attempt 3 refused
    now[0] = 20.0
    with pytest.raises(EncodeError, match="still gone after 3 attempts"):
        sink.write(frame)
