"""Test media: generated clips (ffmpeg lavfi and PyAV) and ffprobe helpers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import av
import numpy as np

FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"
CLIP_S = 1  # length of generated clips
RATE = 25


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-v", "error", "-y", *args], check=True, timeout=60)


def make_vfr(path: Path) -> Path:
    """H.264 MP4 with irregular frame spacing (40 ms, then 80-120 ms gaps; 16 frames)."""
    ffmpeg(
        "-f", "lavfi", "-i", f"testsrc=size=96x64:rate={RATE}", "-frames:v", "16",
        "-vf", "setpts='if(lt(N,10),N*0.04,0.4+(N-10)*0.1)/TB'", "-fps_mode", "passthrough",
        "-c:v", "libx264", "-video_track_timescale", "1000", str(path),
    )  # fmt: skip
    return path


def make_odd(path: Path) -> Path:
    """33x17 lossless FFV1 in Matroska (odd sizes cannot be 4:2:0 H.264)."""
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size=33x17:rate={RATE}", "-t", str(CLIP_S), "-c:v", "ffv1", str(path))
    return path


def make_10bit(path: Path) -> Path:
    """H.264 High 10, yuv420p10le."""
    ffmpeg(
        "-f", "lavfi", "-i", f"testsrc=size=96x64:rate={RATE}", "-t", str(CLIP_S),
        "-c:v", "libx264", "-pix_fmt", "yuv420p10le", str(path),
    )  # fmt: skip
    return path


def make_with_audio(path: Path, seconds: float = CLIP_S) -> Path:
    """H.264 + AAC (sine) MP4."""
    ffmpeg(
        "-f", "lavfi", "-i", f"testsrc=size=96x64:rate={RATE}",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", str(seconds), "-c:v", "libx264", "-c:a", "aac", "-shortest", str(path),
    )  # fmt: skip
    return path


def make_rotated(path: Path, rotation: int = 90, frames: int = 10) -> Path:
    """H.264 MP4 with a display matrix (Debian's ffmpeg 5.1 cannot write one; PyAV can)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.set_display_rotation(rotation)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((64, 96, 3), i * 20, np.uint8), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def probe_streams(path: Path | str) -> list[dict]:
    """ffprobe stream entries with decoded frame counts."""
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return json.loads(out)["streams"]


def probe_frame_times(path: Path | str, stream: str = "v:0") -> list[float]:
    """Presentation times (s) of every decoded frame of a stream, in display order."""
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-select_streams", stream, "-show_entries", "frame=pts_time", "-of", "csv=p=0",
         str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return [float(line.split(",")[0]) for line in out.split() if line.strip() and line.split(",")[0] != "N/A"]


def probe_packets(path: Path | str, stream: str = "a:0") -> int:
    """Number of packets of a stream."""
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-select_streams", stream, "-show_entries", "packet=pts", "-of", "csv=p=0",
         str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return len(out.split())
