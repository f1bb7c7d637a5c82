"""Guidance cache: CLIP guidance recomputed every N frames, at once on a scene cut, blended by EMA.

Why a cache: the CLIP towers run once per refresh instead of once per frame, while haze density and
scene semantics change slowly. ``refresh_every`` defaults to 8: at 25 fps the guidance is then at most
0.32 s old (scene cuts refresh at once), and CLIP costs an eighth of its per-frame price. Measured on
the 2-core CPU (random weights, 720p, see ``cliphaze bench pipeline`` (c) and docs/benchmarks.md): a
ViT-B/32 guidance pass takes about 3.6 s next to 46 s for the cliphaze-t network at scale 0.25, so on a
CPU the network dominates; N matters where CLIP's share is larger (GPUs; not measured here, no GPU).
The PSNR between N=8 and N=1 outputs needs trained weights to mean anything; random weights react to
guidance far more than a trained network.

On a GPU a refresh runs on the low-priority guidance stream; frames keep using the newest *finished*
guidance until the refresh completes (restoration never waits for CLIP), except when there is no
guidance yet (first frame, after a scene cut) or ``wait_for_refresh`` is set. On the CPU the refresh is
synchronous, so frames always use it at once. With ``refresh_every=1`` and ``ema_weight=1`` each
frame's guidance is exactly ``encode_guidance`` of that frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cliphaze.dehazer import Dehazer
from cliphaze.guidance_types import Guidance
from pipelines.config import GuidanceCacheConfig
from pipelines.cuda_streams import Marker, Streams

logger = logging.getLogger(__name__)

# The scene-cut detector reads every k-th pixel so that a thumbnail costs little at any resolution;
# k keeps about this many source pixels per thumbnail pixel along each axis.
DETECTOR_PIXELS_PER_CELL = 4


@dataclass
class CacheCounters:
    """Frames served from the cache, frames that triggered a computation, and scene cuts."""

    hits: int = 0
    misses: int = 0
    invalidations: int = 0


def thumbnails(frames: torch.Tensor, size_px: int) -> torch.Tensor:
    """Downscaled grey thumbnails for the scene-cut detector.

    Args:
        frames: (N, H, W, 3) uint8.
        size_px: thumbnail side.

    Returns:
        (N, size_px, size_px) float in [0, 1].
    """
    step = max(1, min(frames.shape[1], frames.shape[2]) // (size_px * DETECTOR_PIXELS_PER_CELL))
    sparse = frames[:, ::step, ::step].float().mean(dim=-1) / 255.0
    return F.adaptive_avg_pool2d(sparse.unsqueeze(1), size_px).squeeze(1)


class GuidanceCache:
    """Per-stream cache of the dehazer's guidance (see module docstring). Not thread-safe: one owner."""

    def __init__(self, dehazer: Dehazer, config: GuidanceCacheConfig, streams: Streams) -> None:
        self.dehazer = dehazer
        self.config = config
        self.streams = streams
        self.counters = CacheCounters()
        self._current: Guidance | None = None  # batch-1 guidance in use
        self._pending: tuple[Guidance, Marker] | None = None  # launched refresh not finished yet
        self._since_refresh = 0  # frames since the last refresh was launched
        self._previous_thumb: torch.Tensor | None = None  # (s, s) of the last frame seen

    def invalidate(self) -> None:
        """Forget everything: the next frame computes fresh guidance (and waits for it)."""
        self._current = None
        self._pending = None
        self._previous_thumb = None

    def _adopt(self, fresh: Guidance) -> None:
        self._current = fresh if self._current is None else self._current.lerp(fresh, self.config.ema_weight)

    def guidance_for(self, frames: torch.Tensor) -> tuple[Guidance, list[Guidance], Marker | None]:
        """Guidance for a batch, frame by frame in order.

        Call inside ``streams.guidance()`` after the frames' upload marker was waited for.

        Args:
            frames: (N, H, W, 3) uint8 on the dehazer's device.

        Returns:
            (batch guidance for ``restore`` (batch N, or 1 when all frames share one), the per-frame
            batch-1 guidances, a marker restoration must wait for, or None when nothing new was made).
        """
        cfg = self.config
        thumbs = thumbnails(frames, cfg.thumbnail_px)
        per_frame: list[Guidance] = []
        ready: Marker | None = None
        for i in range(frames.shape[0]):
            if self._previous_thumb is not None:
                change = (thumbs[i] - self._previous_thumb).abs().mean().item()
                if change > cfg.scene_cut_threshold:
                    logger.debug("scene cut (mean abs change %.3f): guidance invalidated", change)
                    self.counters.invalidations += 1
                    self._current = None
                    self._pending = None
            self._previous_thumb = thumbs[i]
            if self._pending is not None and self._pending[1].done():
                self._adopt(self._pending[0])
                self._pending = None
                ready = self.streams.record()
            due = self._current is None or self._since_refresh >= cfg.refresh_every
            if due and self._pending is None:
                fresh = self.dehazer.encode_guidance(frames[i : i + 1])
                self.counters.misses += 1
                self._since_refresh = 0
                marker = self.streams.record()
                if self._current is None or cfg.wait_for_refresh or marker.done():
                    self._adopt(fresh)  # CPU markers are always done: synchronous, used at once
                    ready = self.streams.record()
                else:
                    self._pending = (fresh, marker)
            else:
                self.counters.hits += 1
            self._since_refresh += 1
            assert self._current is not None  # adopted above whenever there was none
            per_frame.append(self._current)
        if all(g is per_frame[0] for g in per_frame):
            batch = per_frame[0]
        else:
            batch = Guidance.cat(per_frame)
        self.streams.to_compute(batch.density, batch.tokens)
        return batch, per_frame, ready
