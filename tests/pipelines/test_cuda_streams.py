"""CUDA path of the engine: copy/compute/guidance streams, pinned buffers, events (gpu marker)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pipeline_fakes import CountingDehazer, ListSink, ListSource, make_frames

from cliphaze.baselines.dcp import DarkChannelDehazer
from pipelines.config import GuidanceCacheConfig, PipelineConfig
from pipelines.cuda_streams import CudaStreams, create_streams
from pipelines.runner import run

pytestmark = pytest.mark.gpu


def test_cuda_streams_round_trip_through_pinned_memory() -> None:
    streams = create_streams(torch.device("cuda"))
    assert isinstance(streams, CudaStreams)
    arrays = [np.full((64, 48, 3), i, np.uint8) for i in range(4)]
    frames, uploaded = streams.upload(arrays)
    assert frames.is_cuda and frames.shape == (4, 64, 48, 3)
    with streams.compute():
        uploaded.wait()
        doubled = frames * 2
        done = streams.record()
    host = streams.download(doubled, done)
    assert host.is_pinned() and not host.is_cuda
    assert [int(host[i, 0, 0, 0]) for i in range(4)] == [0, 2, 4, 6]
    done.synchronize()
    assert done.done()


def test_engine_on_cuda_matches_cpu_for_dcp() -> None:
    frames = make_frames(12, width=160, height=96)
    cpu_sink, gpu_sink = ListSink(), ListSink()
    run(ListSource(frames), cpu_sink, DarkChannelDehazer("cpu"), PipelineConfig(batch=3))
    run(ListSource(frames), gpu_sink, DarkChannelDehazer("cuda"), PipelineConfig(batch=3))
    assert [f.pts for f in gpu_sink.frames] == [f.pts for f in frames]
    for a, b in zip(cpu_sink.frames, gpu_sink.frames):
        assert np.abs(a.data.astype(int) - b.data.astype(int)).max() <= 2  # float reductions differ slightly


def test_cuda_guidance_parity_when_waiting_for_refresh() -> None:
    frames = make_frames(10, cut_at=5)
    reference = CountingDehazer(device="cuda")
    expected = []
    for frame in frames:
        x = torch.from_numpy(frame.data)[None].cuda()
        expected.append(reference.restore(x, reference.encode_guidance(x))[0].cpu().numpy())
    sink = ListSink()
    config = PipelineConfig(guidance=GuidanceCacheConfig(refresh_every=1, ema_weight=1.0,
                                                                         wait_for_refresh=True))  # fmt: skip
    run(ListSource(frames), sink, CountingDehazer(device="cuda"), config)
    for got, want in zip(sink.frames, expected):
        assert np.array_equal(got.data, want)


def test_cuda_async_guidance_never_blocks_and_counts() -> None:
    dehazer = CountingDehazer(device="cuda")
    config = PipelineConfig(batch=2, guidance=GuidanceCacheConfig(refresh_every=4))
    stats = run(ListSource(make_frames(24)), ListSink(), dehazer, config)
    assert stats.frames_out == 24
    assert stats.guidance_misses == dehazer.encode_calls <= 6
