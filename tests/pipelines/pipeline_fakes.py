"""Fake sources, sinks and dehazers for the engine tests (no media, no model)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from cliphaze.guidance_types import Guidance
from stream.frame_queue import FrameQueue
from stream.records import EndOfStream, Frame, VideoInfo

TIME_BASE = Fraction(1, 12800)
PTS_STEP = 512  # 25 fps in 1/12800


def make_info(width: int = 32, height: int = 24, *, live: bool = False) -> VideoInfo:
    return VideoInfo(
        width=width, height=height, time_base=TIME_BASE, fps=Fraction(25), codec="h264", pix_fmt="yuv420p",
        color_range="tv", color_matrix="bt709", is_live=live,
    )  # fmt: skip


def make_frames(count: int, width: int = 32, height: int = 24, seed: int = 0, cut_at: int | None = None) -> list[Frame]:
    """Frames with increasing pts, one fake audio packet each; a brightness jump at ``cut_at``."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 120, (height, width, 3), dtype=np.uint8)
    frames = []
    for i in range(count):
        noise = rng.integers(0, 8, (height, width, 3), dtype=np.uint8)
        data = base + noise + np.uint8(2 * (i % 10))  # slow brightness drift: guidance differs per frame
        if cut_at is not None and i >= cut_at:
            data = 255 - data
        frames.append(Frame(data=data, pts=i * PTS_STEP, time_base=TIME_BASE, index=i, packets=(f"audio{i}",)))
    return frames


class ListSource:
    """Iterates given frames; sets ``end`` (with a trailing packet) when exhausted; optional pacing/failure."""

    def __init__(self, frames: list[Frame], *, live: bool = False, interval_s: float = 0.0,
                 fail_at: int | None = None) -> None:  # fmt: skip
        self.frames = frames
        h, w = frames[0].data.shape[:2] if frames else (24, 32)
        self.info = make_info(w, h, live=live)
        self.interval_s = interval_s
        self.fail_at = fail_at
        self.end: EndOfStream | None = None
        self.delivered = 0

    def __iter__(self) -> Iterator[Frame]:
        for i, frame in enumerate(self.frames):
            if self.fail_at is not None and i == self.fail_at:
                raise OSError("camera unplugged")
            if self.interval_s:
                time.sleep(self.interval_s)
            self.delivered += 1
            yield frame
        self.end = EndOfStream(packets=("audio-tail",))


@dataclass(frozen=True)
class LiveStats:
    """The counters of ``stream.source.SourceStats`` the engine reads."""

    drops: int
    queue_depth: int


class LiveListSource:
    """A live camera as ``stream.source.FrameSource`` delivers it: a reader thread pushes ``frames`` (every
    ``interval_s``) into the same keep-latest ``FrameQueue`` of ``size`` frames, which drops the oldest and
    moves its audio on; iterating takes from that queue; ``stats`` counts drops."""

    def __init__(self, frames: list[Frame], *, size: int = 2, interval_s: float = 0.0) -> None:
        h, w = frames[0].data.shape[:2]
        self.info = make_info(w, h, live=True)
        self.end: EndOfStream | None = None
        self._queue = FrameQueue(size, drop_oldest=True)
        self._reader = threading.Thread(target=self._read, args=(frames, interval_s), daemon=True)
        self._reader.start()

    def _read(self, frames: list[Frame], interval_s: float) -> None:
        for frame in frames:
            time.sleep(interval_s)
            orphans = self._queue.take_orphans()  # as FrameSource._push: a dropped frame's audio with no successor
            self._queue.put(dataclasses.replace(frame, packets=orphans + frame.packets))
        self._queue.put_end(EndOfStream(packets=self._queue.take_orphans() + ("audio-tail",)))

    @property
    def stats(self) -> LiveStats:
        return LiveStats(drops=self._queue.drops, queue_depth=len(self._queue))

    def __iter__(self) -> Iterator[Frame]:
        while True:
            item = self._queue.get(None)
            if isinstance(item, EndOfStream):
                self.end = item
                return
            yield item


class ListSink:
    """Collects written frames; can fail on the k-th write."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.frames: list[Frame] = []
        self.ends: list[EndOfStream] = []
        self.fail_at = fail_at

    def write(self, frame: Frame) -> None:
        if self.fail_at is not None and len(self.frames) == self.fail_at:
            raise OSError("disk full")
        self.frames.append(frame)

    def write_end(self, end: EndOfStream | None) -> None:
        assert end is not None
        self.ends.append(end)


class CountingDehazer:
    """Guidance-using fake: guidance = per-frame mean, restore adds it (so stale guidance shows).

    ``encode_guidance`` calls and frames are counted; ``delay_s`` slows restore; ``fail_at`` raises.
    """

    name = "counting"

    def __init__(self, *, delay_s: float = 0.0, fail_at: int | None = None, uses_guidance: bool = True,
                 device: str = "cpu") -> None:  # fmt: skip
        self.device = torch.device(device)
        self.encode_calls = 0
        self.encoded_frames = 0
        self.restored = 0
        self.delay_s = delay_s
        self.fail_at = fail_at
        self._uses_guidance = uses_guidance
        self.lock = threading.Lock()

    @property
    def uses_guidance(self) -> bool:
        return self._uses_guidance

    def encode_guidance(self, frames: torch.Tensor) -> Guidance:
        with self.lock:
            self.encode_calls += 1
            self.encoded_frames += frames.shape[0]
        mean = frames.float().mean(dim=(1, 2, 3)) / 255.0  # (N,)
        return Guidance(density=mean.view(-1, 1, 1, 1).expand(-1, 1, 7, 7).contiguous())

    def restore(self, frames: torch.Tensor, guidance: Guidance | None, *, scale: float = 1.0) -> torch.Tensor:
        if self.fail_at is not None and self.restored >= self.fail_at:
            raise RuntimeError("model exploded")
        if self.delay_s:
            time.sleep(self.delay_s)
        if not self._uses_guidance:
            self.restored += frames.shape[0]
            return frames.clone()
        if guidance is None:
            guidance = self.encode_guidance(frames)
        assert guidance.density is not None
        shift = (guidance.density[:, 0, 0, 0] * 100.0).round().to(torch.int16).view(-1, 1, 1, 1)
        self.restored += frames.shape[0]
        return (frames.to(torch.int16) + shift).clamp(0, 255).to(torch.uint8)


# A tiny random CLIP (64 px input, 32-d joint space = cliphaze-tiny's semantic width) for real-model tests.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def make_tiny_bundle(folder: Path) -> Path:
    """A cliphaze-tiny bundle with random weights and embedded tiny CLIP towers (tests only, never a default)."""
    import json
    import uuid

    from cliphaze.bundle import save_bundle
    from cliphaze.clip import ClipSpec, GuidanceConfig, GuidanceEncoder, create_clip, register_model_config
    from cliphaze.clip.prompts import text_prompt_set
    from cliphaze.factory import create_model

    name = f"cz-pipeline-tiny-{uuid.uuid4().hex[:8]}"
    config_path = folder / f"{name}.json"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG))
    register_model_config(config_path)
    torch.manual_seed(0)
    clip = create_clip(ClipSpec(name))
    prompts = text_prompt_set(clip.model, clip.identity, ("a hazy photo.", "a clear photo."))
    encoder = GuidanceEncoder(GuidanceConfig(clip=ClipSpec(name), input_size_px=64), clip, prompts=prompts)
    net = create_model("cliphaze-tiny").eval()
    path = folder / "tiny_bundle.safetensors"
    save_bundle(path, net, encoder, embed_towers=True)
    return path
