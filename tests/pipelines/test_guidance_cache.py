"""Guidance cache: exact parity at N=1, real skipping of encode_guidance, scene cuts, EMA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pipeline_fakes import CountingDehazer, ListSink, ListSource, make_frames

from cliphaze.guidance_types import Guidance
from pipelines.config import GuidanceCacheConfig, PipelineConfig
from pipelines.cuda_streams import CpuStreams, DoneMarker, create_streams
from pipelines.guidance_cache import GuidanceCache, densities_to_host
from pipelines.runner import run

EXACT = GuidanceCacheConfig(refresh_every=1, ema_weight=1.0)


def _frame_by_frame(dehazer: CountingDehazer, frames: list) -> list[np.ndarray]:
    out = []
    for frame in frames:
        x = torch.from_numpy(frame.data)[None]
        out.append(dehazer.restore(x, dehazer.encode_guidance(x))[0].numpy())
    return out


def test_every_frame_without_blending_equals_frame_by_frame_calls() -> None:
    frames = make_frames(12, cut_at=6)
    expected = _frame_by_frame(CountingDehazer(), frames)
    sink = ListSink()
    run(ListSource(frames), sink, CountingDehazer(), PipelineConfig(guidance=EXACT))
    assert len(sink.frames) == len(expected)
    for got, want in zip(sink.frames, expected):
        assert np.array_equal(got.data, want)


def test_cache_skips_encode_guidance_calls() -> None:
    frames = make_frames(40)
    dehazer = CountingDehazer()
    config = PipelineConfig(guidance=GuidanceCacheConfig(refresh_every=8, ema_weight=1.0))
    stats = run(ListSource(frames), ListSink(), dehazer, config)
    assert dehazer.encode_calls == math.ceil(40 / 8) == stats.guidance_misses
    assert stats.guidance_hits == 40 - dehazer.encode_calls
    # restore never recomputed guidance itself (it always got the cached one)
    assert dehazer.encoded_frames == dehazer.encode_calls


def test_cache_with_batches_counts_per_frame() -> None:
    dehazer = CountingDehazer()
    config = PipelineConfig(batch=3, guidance=GuidanceCacheConfig(refresh_every=4, ema_weight=1.0))
    stats = run(ListSource(make_frames(20)), ListSink(), dehazer, config)
    assert dehazer.encode_calls == 5 and stats.guidance_misses == 5 and stats.guidance_hits == 15


def test_scene_cut_refreshes_at_once() -> None:
    frames = make_frames(20, cut_at=5)
    dehazer = CountingDehazer()
    config = PipelineConfig(guidance=GuidanceCacheConfig(refresh_every=100, ema_weight=0.5))
    sink = ListSink()
    stats = run(ListSource(frames), sink, dehazer, config)
    assert stats.guidance_invalidations == 1
    assert dehazer.encode_calls == 2  # first frame + the cut
    # after the cut the output uses the new scene's guidance, not a blend with the old one
    want = _frame_by_frame(CountingDehazer(), frames[5:6])[0]
    assert np.array_equal(sink.frames[5].data, want)


def test_ema_blends_fresh_guidance() -> None:
    dehazer = CountingDehazer()
    cache = GuidanceCache(dehazer, GuidanceCacheConfig(refresh_every=1, ema_weight=0.25), create_streams(dehazer.device))
    dark = torch.full((1, 8, 8, 3), 40, dtype=torch.uint8)
    lighter = torch.full((1, 8, 8, 3), 50, dtype=torch.uint8)  # small change: no scene cut
    first = cache.guidance_for(dark).guidance
    second_result = cache.guidance_for(lighter)
    second = second_result.guidance
    assert first.density is not None and second.density is not None
    expected = 40 / 255 + 0.25 * (50 / 255 - 40 / 255)
    assert second.density.flatten()[0].item() == pytest.approx(expected, rel=1e-6)
    assert densities_to_host(second_result.densities) == [pytest.approx(expected, rel=1e-6)]
    assert cache.counters.misses == 2 and cache.counters.invalidations == 0


def test_invalidate_forces_a_refresh() -> None:
    dehazer = CountingDehazer()
    cache = GuidanceCache(dehazer, GuidanceCacheConfig(refresh_every=50), create_streams(dehazer.device))
    frames = torch.full((2, 8, 8, 3), 60, dtype=torch.uint8)
    cache.guidance_for(frames)
    assert (cache.counters.misses, cache.counters.hits) == (1, 1)
    cache.invalidate()
    cache.guidance_for(frames[:1])
    assert cache.counters.misses == 2


def test_density_is_logged_for_dehazers_without_guidance() -> None:
    dehazer = CountingDehazer(uses_guidance=False)
    densities: list[float | None] = []
    config = PipelineConfig(want_density=True, guidance=GuidanceCacheConfig(refresh_every=2))
    run(ListSource(make_frames(6)), ListSink(), dehazer, config, on_frame=lambda e: densities.append(e.density))
    assert len(densities) == 6 and all(d is not None and 0.0 < d < 1.0 for d in densities)
    assert dehazer.encode_calls == 3


def test_batched_guidance_is_concatenated_per_frame() -> None:
    dehazer = CountingDehazer()
    cache = GuidanceCache(dehazer, GuidanceCacheConfig(refresh_every=2, ema_weight=1.0), create_streams(dehazer.device))
    frames = torch.stack([torch.full((8, 8, 3), v, dtype=torch.uint8) for v in (40, 41, 42, 43)])
    result = cache.guidance_for(frames, list(frames.numpy()))
    batch = result.guidance
    assert result.densities is not None and len(result.densities) == 4
    assert isinstance(batch, Guidance) and batch.batch_size == 4 and batch.density is not None
    # Frames 0-1 share the guidance computed at frame 0, frames 2-3 the one refreshed at frame 2.
    rows = batch.density
    assert torch.equal(rows[0], rows[1]) and torch.equal(rows[2], rows[3]) and not torch.equal(rows[1], rows[2])


class _Launched(DoneMarker):
    """Marker of a fake stream: covers the work launched before it was recorded, like a CUDA event."""

    def __init__(self, log: list[str]) -> None:
        self.covers = list(log)


class _LoggingStreams(CpuStreams):
    """CPU twin that logs the guidance work launched, so a test can see what a marker covers."""

    def __init__(self) -> None:
        super().__init__(torch.device("cpu"))
        self.log: list[str] = []

    def record(self) -> _Launched:  # type: ignore[override]
        return _Launched(self.log)


def test_ready_marker_covers_the_batch_concatenation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch 4, refresh inside the batch: restore waits for ``ready``, so ``ready`` must come after the work
    that writes what restore reads, the per-frame concatenation included (issue 15, 4: it was recorded
    before the cat, and restore could read guidance that was not written yet)."""
    streams = _LoggingStreams()
    dehazer = CountingDehazer()
    original_cat, original_encode = Guidance.cat, dehazer.encode_guidance

    def logged_cat(items: list[Guidance]) -> Guidance:
        streams.log.append("cat")
        return original_cat(items)

    def logged_encode(frames: torch.Tensor) -> Guidance:
        streams.log.append("encode")
        return original_encode(frames)

    monkeypatch.setattr(Guidance, "cat", staticmethod(logged_cat))
    monkeypatch.setattr(dehazer, "encode_guidance", logged_encode)
    cache = GuidanceCache(dehazer, GuidanceCacheConfig(refresh_every=2, ema_weight=1.0), streams)
    frames = torch.stack([torch.full((8, 8, 3), v, dtype=torch.uint8) for v in (40, 41, 42, 43)])
    result = cache.guidance_for(frames, list(frames.numpy()))
    assert streams.log == ["encode", "encode", "cat"]  # a refresh at frames 0 and 2, then the batch's cat
    assert isinstance(result.ready, _Launched) and result.ready.covers == streams.log
