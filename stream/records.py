"""Typed records that flow through stream/ and pipelines/.

Time is integer ``pts`` plus a ``Fraction`` ``time_base`` everywhere inside; seconds appear only at
the edges and are named ``*_s``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np


@dataclass(frozen=True)
class AudioInfo:
    """One audio stream of a source."""

    index: int  # stream index inside the container
    codec: str  # e.g. "aac", "pcm_s16le"
    sample_rate: int  # Hz
    channels: int
    time_base: Fraction
    # an av stream holding a detached copy of the input's codec parameters; sinks stream-copy from it
    template: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class VideoInfo:
    """What a source delivers, known after open."""

    width: int  # px, of the decoded (RGB) frames after rotation is NOT applied
    height: int  # px
    time_base: Fraction  # of Frame.pts
    fps: Fraction | None  # nominal (average) rate; None when unknown (some live sources)
    codec: str  # input codec name, e.g. "h264"
    pix_fmt: str  # input pixel format, e.g. "yuv420p", "yuv420p10le"
    color_range: str  # "tv" (limited) | "pc" (full) | "unknown"
    color_matrix: str  # "bt709" | "bt601" | "bt2020" | "unknown"
    rotation: int = 0  # degrees, from the display matrix / rotate tag (0, 90, 180, 270)
    duration_s: float | None = None  # None for live sources
    frame_count: int | None = None  # container's count when known (files)
    is_live: bool = False
    audio: tuple[AudioInfo, ...] = ()
    uri: str = ""  # redacted: never carries a password


@dataclass(frozen=True)
class Frame:
    """One decoded video frame.

    ``data`` is RGB uint8 (H, W, 3), C-contiguous, on the host. ``packets`` carries the audio packets
    demuxed since the previous video frame, so audio travels with video through the pipeline and the
    sink writes it untouched on the same clock.
    """

    data: np.ndarray  # (H, W, 3) uint8 RGB
    pts: int | None
    time_base: Fraction
    index: int  # 0-based count of frames delivered by the source (monotonic across reconnects)
    source_id: str = ""
    packets: tuple[Any, ...] = field(default=(), repr=False)  # av.Packet audio packets (opaque here)

    @property
    def time_s(self) -> float | None:
        return None if self.pts is None else float(self.pts * self.time_base)


@dataclass(frozen=True)
class EndOfStream:
    """Explicit end-of-stream marker (never ``None``). Carries audio packets left after the last frame."""

    source_id: str = ""
    packets: tuple[Any, ...] = field(default=(), repr=False)
    reason: str = "eof"  # "eof" | "stopped" | "error"
