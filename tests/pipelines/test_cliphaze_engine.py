"""The engine with the real CLIPHaze dehazer (tiny random bundle): exact N=1 parity, cached CLIP calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pipeline_fakes import ListSink, ListSource, make_frames, make_tiny_bundle

from pipelines.config import GuidanceCacheConfig, PipelineConfig
from pipelines.runner import run

pytestmark = pytest.mark.slow  # numba JIT of the scan + tiny CLIP: tens of seconds on 2 cores


@pytest.fixture(scope="module")
def dehazer_factory(tmp_path_factory: pytest.TempPathFactory):
    from cliphaze.inference import ClipHazeDehazer

    bundle = make_tiny_bundle(tmp_path_factory.mktemp("bundle"))
    return lambda: ClipHazeDehazer.from_bundle(bundle)


def test_tiny_cliphaze_every_frame_equals_frame_by_frame(dehazer_factory) -> None:
    frames = make_frames(6, width=48, height=32, cut_at=3)
    reference = dehazer_factory()
    expected = []
    for frame in frames:
        x = torch.from_numpy(frame.data)[None]
        expected.append(reference.restore(x, reference.encode_guidance(x))[0].numpy())
    sink = ListSink()
    config = PipelineConfig(guidance=GuidanceCacheConfig(refresh_every=1, ema_weight=1.0))
    run(ListSource(frames), sink, dehazer_factory(), config)
    assert len(sink.frames) == 6
    for got, want in zip(sink.frames, expected):
        assert np.array_equal(got.data, want)


def test_tiny_cliphaze_cache_skips_clip_calls(dehazer_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    dehazer = dehazer_factory()
    calls: list[int] = []
    original = dehazer.encoder.encode

    def counted(frames: torch.Tensor):
        calls.append(frames.shape[0])
        return original(frames)

    monkeypatch.setattr(dehazer.encoder, "encode", counted)
    config = PipelineConfig(batch=2, guidance=GuidanceCacheConfig(refresh_every=4))
    stats = run(ListSource(make_frames(12, width=48, height=32)), ListSink(), dehazer, config)
    assert stats.frames_out == 12
    assert len(calls) == 3 == stats.guidance_misses  # frames 0, 4, 8: restore never ran CLIP itself
    assert sum(calls) == 3
