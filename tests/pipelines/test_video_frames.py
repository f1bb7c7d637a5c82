"""Reading a video file into RGB arrays for training and evaluation."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from pipelines.video_frames import VideoReadError, iter_video_frames, read_frames

FRAMES = 6


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """A 6-frame clip whose frame i is a flat grey of level 40 + 30·i (codec rounding stays far below 15)."""
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(FRAMES):
            rgb = np.full((48, 64, 3), 40 + 30 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_every_and_max_frames_pick_decode_order_indices(clip: Path) -> None:
    taken = list(iter_video_frames(clip, every=2, max_frames=2))
    assert [i for i, _ in taken] == [0, 2]
    for index, rgb in taken:
        assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
        assert abs(float(rgb.mean()) - (40 + 30 * index)) < 6


def test_read_frames_returns_the_asked_indices(clip: Path) -> None:
    frames = read_frames(clip, [1, 4])
    assert sorted(frames) == [1, 4]
    assert float(frames[4].mean()) > float(frames[1].mean()) + 60
    assert sorted(read_frames(clip)) == list(range(FRAMES))


def test_unreadable_video_is_one_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(VideoReadError, match="cannot open video"):
        list(iter_video_frames(bad))
