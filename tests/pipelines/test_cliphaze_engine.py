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


def test_graph_path_in_the_engine_equals_eager_with_guidance_refreshed_inside_batches(dehazer_factory) -> None:
    """The restore path as the engine replays it (``rerun_capture`` stands in for CUDA graphs on the CPU):
    warmed up at the source size, batch 3 with density and tokens (batch-1 and concatenated guidance fill the
    same static buffers), a shorter last batch; output equals the eager engine's."""
    from cliphaze.graphs import rerun_capture
    from cliphaze.inference import ClipHazeDehazer

    frames = make_frames(8, width=48, height=32, cut_at=5)
    config = PipelineConfig(batch=3, guidance=GuidanceCacheConfig(refresh_every=2, ema_weight=1.0))
    eager_sink, graphed_sink = ListSink(), ListSink()
    run(ListSource(frames), eager_sink, dehazer_factory(), config)
    base = dehazer_factory()
    shapes, replays = [], []

    def capture(fn, inputs):  # noqa: ANN001, ANN202 - rerun_capture, counted
        shapes.append(tuple(inputs[0].shape))
        captured = rerun_capture(fn, inputs)
        replay = captured.replay
        captured.replay = lambda: (replays.append(1), replay())
        return captured

    graphed = ClipHazeDehazer(base.net, base.encoder, graph_capture=capture)
    run(ListSource(frames), graphed_sink, graphed, config)
    assert shapes == [(3, 32, 48, 3)] and len(replays) == 2  # warmed up; batches 1 and 2 replayed, the last (2) eager
    assert len(graphed_sink.frames) == len(eager_sink.frames) == 8
    for got, want in zip(graphed_sink.frames, eager_sink.frames):
        assert np.array_equal(got.data, want.data)
