"""Decoded frames of a video file as RGB arrays, for training and evaluation.

``cliphaze/`` takes arrays and image paths only; reading video (PyAV through ``stream.convert``) lives
here, one layer up, and hands ``cliphaze.evaluate`` and ``cliphaze.train.content`` plain arrays.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np

from stream.convert import frame_to_rgb


class VideoReadError(RuntimeError):
    """A video file that cannot be opened or has no video stream."""


def iter_video_frames(path: Path, *, every: int = 1, max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, RGB uint8 (H, W, 3)) for every ``every``-th decoded frame of a video file.

    Raises:
        VideoReadError: the file cannot be opened or holds no video stream.
    """
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise VideoReadError(f"cannot open video {path}: {exc}") from exc
    with container:
        if not container.streams.video:
            raise VideoReadError(f"no video stream in {path}")
        taken = 0
        for index, frame in enumerate(container.decode(video=0)):
            if index % every:
                continue
            yield index, frame_to_rgb(frame)
            taken += 1
            if max_frames is not None and taken >= max_frames:
                return


def read_frames(path: Path, indices: Collection[int] | None = None) -> dict[int, np.ndarray]:
    """Decode frames (all, or the given indices) of a video as RGB uint8, keyed by frame index."""
    wanted = None if indices is None else set(indices)
    out: dict[int, np.ndarray] = {}
    for index, rgb in iter_video_frames(path):
        if wanted is None or index in wanted:
            out[index] = rgb
        if wanted is not None and len(out) == len(wanted):
            break
    return out
