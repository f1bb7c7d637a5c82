"""A file output cut by SIGKILL mid-write (fragmented MP4, Matroska, MPEG-TS) still decodes up to its last\nfragment or cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import stream_media

from stream.sink import PART_SUFFIX
from stream.source import open_source

FRAMES = 75  # 3 s at 25 fps, in 0.5 s GOPs
GOP_FRAMES = 12
WAIT_S = 60.0

# Writes FRAMES frames of 160x120 noise in 0.5 s GOPs, says so, and waits to be killed with SIGKILL.
WRITER = """
import sys, time
from fractions import Fraction
import numpy as np
from stream.encoder import EncoderConfig
from stream.records import Frame, VideoInfo
from stream.sink import open_sink

info = VideoInfo(160, 120, Fraction(1, 25), Fraction(25), "rawvideo", "rgb24", "pc", "bt709")
rng = np.random.default_rng(0)
sink = open_sink(sys.argv[1], info, EncoderConfig(preset="ultrafast", gop_s=0.5))
for i in range(int(sys.argv[2])):
    sink.write(Frame(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), i, info.time_base, i))
print("written", flush=True)
time.sleep(600)
"""


def _write_then_kill(target: str) -> None:
    """Run WRITER on ``target`` and SIGKILL it once every frame has been handed to the sink."""
    child = subprocess.Popen([sys.executable, "-c", WRITER, target, str(FRAMES)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # blocks until the writer has handed every frame to the sink
        assert line.strip() == b"written", child.stderr.read().decode() if child.stderr else ""
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(WAIT_S)
        for pipe in (child.stdout, child.stderr):
            if pipe:
                pipe.close()
    assert child.returncode == -signal.SIGKILL


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".ts"])
def test_sigkill_mid_write_leaves_playable_part(tmp_path: Path, suffix: str) -> None:
    target = tmp_path / f"rec{suffix}"
    part = Path(str(target) + PART_SUFFIX)
    _write_then_kill(str(target))
    assert part.exists() and not target.exists()  # never renamed: the run did not finish

    frames = int(stream_media.probe_streams(part)[0]["nb_read_frames"])
    # everything but the open fragment or cluster: at most one GOP short (Matroska held 5 s in memory before)
    assert frames >= FRAMES - GOP_FRAMES, frames
    with open_source(part) as source:
        decoded = sum(1 for _ in source)
    assert decoded == frames
    assert source.end is not None and source.end.reason == "eof"


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_sigkill_mid_segment_keeps_all_but_the_open_gop(tmp_path: Path, suffix: str) -> None:
    _write_then_kill(str(tmp_path / f"rec_%03d{suffix}"))  # 3 s of frames: all in the first (10 s) segment
    segments = sorted(tmp_path.glob(f"rec_*{suffix}"))
    assert len(segments) == 1, segments
    frames = int(stream_media.probe_streams(segments[0])[0]["nb_read_frames"])
    assert frames >= FRAMES - GOP_FRAMES, frames  # 62 of 75 before the segments flushed every packet
