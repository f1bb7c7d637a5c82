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
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

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


@dataclass(frozen=True)
class CacheResult:
    """Guidance of one batch."""

    guidance: Guidance  # for restore: batch N, or batch 1 when all frames share one
    # Mean haze density of each frame's guidance in [0, 1], as 0-d float32 tensors on the device (None: no
    # density map). Not floats: reading them here would synchronize the host with the CLIP work. Each was
    # computed before a ``ready`` marker that this or an earlier batch's restore waited for, so they are
    # written once the batch's restoration is; :func:`densities_to_host` reads them after the download.
    densities: list[torch.Tensor] | None
    # Restoration waits for this (fresh guidance only); None when nothing new was made. Recorded after all of
    # this batch's guidance work (refresh, EMA, the batch concatenation), so it covers what restore reads.
    ready: Marker | None


def densities_to_host(densities: list[torch.Tensor] | None) -> list[float] | None:
    """Per-frame mean densities as floats. Call once the batch's restored frames are on the host (then the
    copy waits for nothing)."""
    return None if densities is None else [float(d) for d in torch.stack(densities).cpu().tolist()]


def thumbnails(frames: Sequence[np.ndarray], size_px: int) -> np.ndarray:
    """Downscaled grey thumbnails for the scene-cut detector, computed on the host (no device sync).

    Args:
        frames: (H, W, 3) uint8 arrays.
        size_px: thumbnail side.

    Returns:
        (N, size_px, size_px) float32 in [0, 1].
    """
    out = np.empty((len(frames), size_px, size_px), dtype=np.float32)
    for i, frame in enumerate(frames):
        step = max(1, min(frame.shape[0], frame.shape[1]) // (size_px * DETECTOR_PIXELS_PER_CELL))
        # area-resize first, grey after (both linear: the same values), so the channel mean runs on s x s pixels
        # and not on the subsampled frame (1.2 -> 0.5 ms per 640x360 frame)
        colour = np.ascontiguousarray(frame[::step, ::step], dtype=np.float32)
        out[i] = cv2.resize(colour, (size_px, size_px), interpolation=cv2.INTER_AREA).mean(axis=2) / 255.0
    return out


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
        self._previous_thumb: np.ndarray | None = None  # (s, s) of the last frame seen
        self._current_density: torch.Tensor | None = None  # 0-d mean of the current density map, on the device

    def invalidate(self) -> None:
        """Forget everything: the next frame computes fresh guidance (and waits for it)."""
        self._current = None
        self._pending = None
        self._previous_thumb = None

    def _adopt(self, fresh: Guidance) -> None:
        """Make ``fresh`` (blended) current. Called only once its work is done or must be waited for anyway."""
        self._current = fresh if self._current is None else self._current.lerp(fresh, self.config.ema_weight)
        density = self._current.density
        # stays on the device: a host copy here would wait for the CLIP work (no host syncs on the hot path)
        self._current_density = None if density is None else density.float().mean()

    def guidance_for(self, frames: torch.Tensor, host: Sequence[np.ndarray] | None = None) -> CacheResult:
        """Guidance for a batch, frame by frame in order.

        Call inside ``streams.guidance()`` after the frames' upload marker was waited for.

        Args:
            frames: (N, H, W, 3) uint8 on the dehazer's device.
            host: the same frames as (H, W, 3) host arrays, for the scene-cut detector (the engine has
                them; without them the frames are copied back, which synchronizes a GPU).

        Returns:
            The batch's guidance, per-frame guidances and densities, and the marker to wait for.
        """
        cfg = self.config
        thumbs = thumbnails(host if host is not None else list(frames.cpu().numpy()), cfg.thumbnail_px)
        per_frame: list[Guidance] = []
        densities: list[torch.Tensor | None] = []
        fresh_work = False  # this call launched guidance work that restore must wait for
        for i in range(frames.shape[0]):
            if self._previous_thumb is not None:
                change = float(np.abs(thumbs[i] - self._previous_thumb).mean())
                if change > cfg.scene_cut_threshold:
                    logger.debug("scene cut (mean abs change %.3f): guidance invalidated", change)
                    self.counters.invalidations += 1
                    self._current = None
                    self._pending = None
            self._previous_thumb = thumbs[i]
            if self._pending is not None and self._pending[1].done():
                self._adopt(self._pending[0])
                self._pending = None
                fresh_work = True
            due = self._current is None or self._since_refresh >= cfg.refresh_every
            if due and self._pending is None:
                fresh = self.dehazer.encode_guidance(frames[i : i + 1])
                self.counters.misses += 1
                self._since_refresh = 0
                marker = self.streams.record()
                if self._current is None or cfg.wait_for_refresh or marker.done():
                    self._adopt(fresh)  # CPU markers are always done: synchronous, used at once
                    fresh_work = True
                else:
                    self._pending = (fresh, marker)
            else:
                self.counters.hits += 1
            self._since_refresh += 1
            assert self._current is not None  # adopted above whenever there was none
            per_frame.append(self._current)
            densities.append(self._current_density)
        if all(g is per_frame[0] for g in per_frame):
            batch = per_frame[0]
        else:
            batch = Guidance.cat(per_frame)
        known = None if any(d is None for d in densities) else [d for d in densities if d is not None]
        self.streams.to_compute(batch.density, batch.tokens)
        # Recorded last: with batch > 1 a refresh inside the batch launches Guidance.cat after
        # the refresh itself, and restore must not read the concatenation before it is written (issue 15, 4).
        ready = self.streams.record() if fresh_work else None
        return CacheResult(guidance=batch, densities=known, ready=ready)
