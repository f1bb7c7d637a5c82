"""stdout sinks: MPEG-TS piped into ``ffmpeg -i - -f null -`` decodes every frame; nothing else on stdout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Decodes a clip and writes it to stdout with the given format; logs (if any) go to stderr.
WRITER = """
import logging, sys
from stream.encoder import EncoderConfig
from stream.sink import open_sink
from stream.source import open_source

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
fmt = sys.argv[2] or None
with open_source(sys.argv[1]) as src, open_sink("-", src.info, EncoderConfig(preset="ultrafast"),
                                                audio_from=src.info, fmt=fmt) as sink:
    for frame in src:
        sink.write(frame)
    sink.write_end(src.end)
"""
TIMEOUT_S = 120


def _pipe_into_ffmpeg(src: Path, fmt: str) -> tuple[int, str]:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(src), fmt], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)  # fmt: skip
    reader = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostats", "-i", "-", "-map", "0:v", "-f", "null", "-", "-progress", "pipe:1"],
        stdin=writer.stdout, capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert writer.stdout is not None
    writer.stdout.close()
    _, err = writer.communicate(timeout=TIMEOUT_S)
    assert writer.returncode == 0, err.decode()
    assert reader.returncode == 0, reader.stderr
    frames = [int(line.split("=")[1]) for line in reader.stdout.splitlines() if line.startswith("frame=")]
    return frames[-1], reader.stderr


@pytest.mark.parametrize(("fmt", "name"), [("", "mpegts"), ("nut", "nut"), ("y4m", "yuv4mpegpipe")])
def test_stdout_decodes_every_frame(clips: dict[str, Path], fmt: str, name: str) -> None:
    frames, log = _pipe_into_ffmpeg(clips["audio"], fmt)
    assert frames == 25
    assert f"Input #0, {name}" in log
    if name != "yuv4mpegpipe":
        assert "Audio: aac" in log  # audio travels in the stream too


def test_stdout_mpegts_bikes_every_frame(clips: dict[str, Path]) -> None:
    frames, _ = _pipe_into_ffmpeg(clips["bikes"], "")
    assert frames == 250


# Reads a stream from stdin and prints how many frames it decoded and the audio packets it carried.
READER = """
from stream.source import open_source

with open_source("-") as src:
    frames = audio = 0
    for frame in src:
        frames += 1
        audio += len(frame.packets)
    print(frames, audio + len(src.end.packets), src.info.codec)
"""


def test_stdin_source(clips: dict[str, Path], tmp_path: Path) -> None:
    ts = tmp_path / "in.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(clips["audio"]), "-c", "copy", "-f", "mpegts", str(ts)],
                   check=True, timeout=TIMEOUT_S)  # fmt: skip
    with ts.open("rb") as stdin:
        done = subprocess.run([sys.executable, "-c", READER], stdin=stdin, capture_output=True, text=True,
                              timeout=TIMEOUT_S)  # fmt: skip
    assert done.returncode == 0, done.stderr
    frames, audio, codec = done.stdout.split()
    assert (int(frames), codec) == (25, "h264") and int(audio) > 0
