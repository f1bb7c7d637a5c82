"""A fragmented MP4 cut by SIGKILL mid-write still decodes up to the last fragment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import stream_media

from stream.sink import PART_SUFFIX
from stream.source import open_source

MIN_BYTES_BEFORE_KILL = 60_000  # several 0.5 s fragments of 160x120 noise
WAIT_S = 60.0

# Writes 0.5 s GOPs of 160x120 frames forever; the test kills it with SIGKILL.
WRITER = """
import sys
from fractions import Fraction
import numpy as np
from stream.encoder import EncoderConfig
from stream.records import Frame, VideoInfo
from stream.sink import open_sink

info = VideoInfo(160, 120, Fraction(1, 25), Fraction(25), "rawvideo", "rgb24", "pc", "bt709")
rng = np.random.default_rng(0)
sink = open_sink(sys.argv[1], info, EncoderConfig(preset="ultrafast", gop_s=0.5))
i = 0
while True:
    sink.write(Frame(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), i, info.time_base, i))
    i += 1
"""


def test_sigkill_mid_write_leaves_playable_part(tmp_path: Path) -> None:
    target = tmp_path / "rec.mp4"
    part = Path(str(target) + PART_SUFFIX)
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < MIN_BYTES_BEFORE_KILL):
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(10)
        if child.stderr:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert part.exists() and not target.exists()  # never renamed: the run did not finish

    frames = int(stream_media.probe_streams(part)[0]["nb_read_frames"])
    assert frames >= 12  # at least one complete 0.5 s fragment
    with open_source(part) as source:
        decoded = sum(1 for _ in source)
    assert decoded == frames
    assert source.end is not None and source.end.reason == "eof"
