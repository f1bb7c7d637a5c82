"""Frozen configuration of the streaming engine."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class PipelineConfigError(ValueError):
    """A pipeline setting out of range (reported to users as bad input)."""


@dataclass(frozen=True)
class GuidanceCacheConfig:
    """When CLIP guidance is recomputed and how it is blended over time."""

    refresh_every: int = 8  # frames between guidance refreshes (1 = every frame); why 8: guidance_cache docstring
    ema_weight: float = 0.5  # weight of a fresh guidance when blended into the cached one (1 = no blending)
    scene_cut_threshold: float = 0.12  # mean abs grey difference in [0, 1] between consecutive thumbnails
    thumbnail_px: int = 32  # side of the downscaled grey frame the scene-cut detector compares
    wait_for_refresh: bool = False  # True: restoration waits for each refresh (exact, N=1 parity on a GPU)

    def __post_init__(self) -> None:
        if self.refresh_every < 1:
            raise PipelineConfigError(f"guidance refresh interval must be >= 1 frame, got {self.refresh_every}")
        if not 0.0 < self.ema_weight <= 1.0:
            raise PipelineConfigError(f"guidance EMA weight must be in (0, 1], got {self.ema_weight}")
        if not (math.isfinite(self.scene_cut_threshold) and self.scene_cut_threshold > 0.0) or self.thumbnail_px < 2:
            raise PipelineConfigError("scene-cut threshold must be > 0 and the thumbnail at least 2 px")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the runner needs besides source, sink and dehazer."""

    batch: int = 1  # frames per restore call (micro-batching)
    queue_depth: int = 4  # capacity of each inter-stage queue, in batches (the source keeps its own frame queue)
    guidance: GuidanceCacheConfig = field(default_factory=GuidanceCacheConfig)  # guidance cache policy
    scale: float = 1.0  # network resolution factor passed to Dehazer.restore, in (0, 1]
    side_by_side: bool = False  # output frames are [input | restored], twice as wide
    max_frames: int | None = None  # stop after this many source frames (None = until end of stream)
    max_duration_s: float | None = None  # stop after this much source time (None = until end of stream)
    want_density: bool = False  # compute guidance even for dehazers that do not use it, to log haze density
    batch_wait_s: float = 0.002  # live sources: longest wait to fill a batch before running a partial one
    poll_s: float = 0.05  # how often blocked workers re-check the stop/abort flags

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise PipelineConfigError(f"batch must be >= 1, got {self.batch}")
        if self.queue_depth < 1:
            raise PipelineConfigError(f"queue depth must be >= 1, got {self.queue_depth}")
        if not 0.0 < self.scale <= 1.0:
            raise PipelineConfigError(f"scale must be in (0, 1], got {self.scale}")
        if self.max_frames is not None and self.max_frames < 1:
            raise PipelineConfigError(f"max frames must be >= 1, got {self.max_frames}")
        if self.max_duration_s is not None and not (math.isfinite(self.max_duration_s) and self.max_duration_s > 0):
            raise PipelineConfigError(f"duration must be > 0 s, got {self.max_duration_s}")
        if not (math.isfinite(self.batch_wait_s) and self.batch_wait_s >= 0):
            raise PipelineConfigError(f"batch wait must be >= 0 s, got {self.batch_wait_s}")
        if not (math.isfinite(self.poll_s) and self.poll_s > 0):
            raise PipelineConfigError(f"poll interval must be > 0 s, got {self.poll_s}")
