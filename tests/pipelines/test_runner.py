"""The staged engine: order, pts, audio, batching, errors, stop, live drops, limits."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from pipeline_fakes import CountingDehazer, ListSink, ListSource, LiveListSource, make_frames

from cliphaze.baselines.none import PassthroughDehazer
from pipelines.config import GuidanceCacheConfig, PipelineConfig, PipelineConfigError
from pipelines.runner import run


def _no_stage_threads() -> bool:
    return not any(t.name.startswith("cliphaze-") and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_frames_leave_in_order_with_pts_and_audio(batch: int) -> None:
    frames = make_frames(10)
    source, sink = ListSource(frames), ListSink()
    stats = run(source, sink, PassthroughDehazer(), PipelineConfig(batch=batch), on_end=sink.write_end)
    assert [f.pts for f in sink.frames] == [f.pts for f in frames]
    assert [f.index for f in sink.frames] == list(range(10))
    assert [f.packets for f in sink.frames] == [f.packets for f in frames]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(sink.frames, frames))
    assert sink.ends and sink.ends[0].packets == ("audio-tail",)  # trailing audio reaches the sink
    assert (stats.frames_in, stats.frames_out, stats.frames_dropped) == (10, 10, 0)
    assert stats.latency_ms_p95 >= stats.latency_ms_p50 > 0
    assert _no_stage_threads()


def test_restored_data_replaces_frames() -> None:
    frames = make_frames(5)
    sink = ListSink()
    config = PipelineConfig(guidance=GuidanceCacheConfig(refresh_every=1, ema_weight=1.0))
    run(ListSource(frames), sink, CountingDehazer(), config)
    for before, after in zip(frames, sink.frames):
        assert not np.array_equal(before.data, after.data)
        assert after.data.shape == before.data.shape and after.data.dtype == np.uint8


def test_side_by_side_doubles_the_width() -> None:
    frames = make_frames(3)
    sink = ListSink()
    run(ListSource(frames), sink, PassthroughDehazer(), PipelineConfig(side_by_side=True))
    assert sink.frames[0].data.shape == (24, 64, 3)
    assert np.array_equal(sink.frames[0].data[:, :32], frames[0].data)


@pytest.mark.parametrize(
    ("where", "kwargs", "error"),
    [
        ("dehazer", {"fail_at": 4}, RuntimeError),
        ("sink", {"fail_at": 3}, OSError),
        ("source", {"fail_at": 6}, OSError),
    ],
)
def test_first_error_stops_everything_and_surfaces(where: str, kwargs: dict[str, int], error: type) -> None:
    frames = make_frames(40)
    source = ListSource(frames, fail_at=kwargs["fail_at"] if where == "source" else None)
    sink = ListSink(fail_at=kwargs["fail_at"] if where == "sink" else None)
    dehazer = CountingDehazer(fail_at=kwargs["fail_at"] if where == "dehazer" else None)
    with pytest.raises(error):
        run(source, sink, dehazer, PipelineConfig(queue_depth=2))
    assert len(sink.frames) < 40
    assert _no_stage_threads()
    assert source.delivered < 40 or where == "sink"  # decode stopped early (bounded queues)


def test_callback_error_surfaces() -> None:
    def on_frame(event: object) -> None:
        raise ValueError("callback broke")

    with pytest.raises(ValueError, match="callback broke"):
        run(ListSource(make_frames(5)), ListSink(), PassthroughDehazer(), PipelineConfig(), on_frame=on_frame)


def test_stop_event_drains_what_was_read() -> None:
    stop = threading.Event()
    sink = ListSink()
    source = ListSource(make_frames(200), interval_s=0.002)

    def on_frame(event: object) -> None:
        if len(sink.frames) == 5:
            stop.set()

    stats = run(source, sink, PassthroughDehazer(), PipelineConfig(), stop_event=stop, on_frame=on_frame)
    assert stats.stopped_early
    assert 5 <= stats.frames_out < 200
    assert stats.frames_out == stats.frames_in == source.delivered  # everything read was written
    assert [f.index for f in sink.frames] == list(range(stats.frames_out))


def test_max_frames_and_duration_limits() -> None:
    sink = ListSink()
    stats = run(ListSource(make_frames(30)), sink, PassthroughDehazer(), PipelineConfig(max_frames=7))
    assert stats.frames_out == 7 and len(sink.frames) == 7 and stats.stopped_early
    sink = ListSink()
    run(ListSource(make_frames(30)), sink, PassthroughDehazer(), PipelineConfig(max_duration_s=0.2))
    assert len(sink.frames) == 5  # 25 fps: pts 0 .. 0.16 s


def test_live_source_drops_oldest_and_keeps_audio() -> None:
    """A camera faster than the dehazer: the source's keep-latest queue drops, the engine adds no queue of
    its own in front of upload, and the run counts the source's drops."""
    frames = make_frames(60)
    sink = ListSink()
    source = LiveListSource(frames, interval_s=0.001)
    dehazer = CountingDehazer(delay_s=0.01, uses_guidance=False)
    events = []
    stats = run(source, sink, dehazer, PipelineConfig(queue_depth=1), on_frame=events.append, on_end=sink.write_end)
    assert stats.frames_dropped == source.stats.drops > 0
    assert stats.frames_out + stats.frames_dropped == 60 and stats.frames_in == stats.frames_out
    assert events[-1].frames_dropped <= stats.frames_dropped and len(events[-1].queue_depths) == 5
    written_audio = [p for f in sink.frames for p in f.packets] + [p for e in sink.ends for p in e.packets]
    expected = [p for f in frames for p in f.packets] + ["audio-tail"]
    assert sorted(written_audio) == sorted(expected)  # dropped frames' audio moved on
    assert [f.pts for f in sink.frames] == sorted(f.pts for f in sink.frames)


class BatchRecorder(CountingDehazer):
    def __init__(self) -> None:
        super().__init__(uses_guidance=False)
        self.batch_sizes: list[int] = []

    def restore(self, frames: torch.Tensor, guidance: object, *, scale: float = 1.0) -> torch.Tensor:
        self.batch_sizes.append(frames.shape[0])
        return super().restore(frames, None, scale=scale)


def test_live_batches_do_not_wait_for_a_slow_camera_but_file_batches_fill() -> None:
    live = BatchRecorder()
    run(LiveListSource(make_frames(6), size=8, interval_s=0.05), ListSink(), live, PipelineConfig(batch=4))
    assert sum(live.batch_sizes) == 6 and len(live.batch_sizes) >= 3  # frames 50 ms apart, batch_wait_s 2 ms
    from_file = BatchRecorder()
    run(ListSource(make_frames(6)), ListSink(), from_file, PipelineConfig(batch=4))
    assert from_file.batch_sizes == [4, 2]


def test_file_source_never_drops() -> None:
    stats = run(ListSource(make_frames(30)), ListSink(), CountingDehazer(delay_s=0.002), PipelineConfig(queue_depth=1))
    assert stats.frames_dropped == 0 and stats.frames_out == 30


def test_resolution_change_starts_a_new_batch() -> None:
    frames = make_frames(3) + [
        f.__class__(data=np.zeros((16, 16, 3), np.uint8), pts=(3 + i) * 512, time_base=f.time_base, index=3 + i)
        for i, f in enumerate(make_frames(2))
    ]
    sink = ListSink()
    run(ListSource(frames), sink, PassthroughDehazer(), PipelineConfig(batch=4))
    assert [f.data.shape for f in sink.frames] == [(24, 32, 3)] * 3 + [(16, 16, 3)] * 2


def test_stats_json_has_the_documented_fields() -> None:
    stats = run(ListSource(make_frames(4)), ListSink(), PassthroughDehazer(), PipelineConfig())
    data = stats.to_dict()
    for key in ("frames_in", "frames_out", "frames_dropped", "reconnects", "wall_s", "fps", "latency_ms_p50",
                "latency_ms_p95"):  # fmt: skip
        assert key in data
    assert data["fps"] == pytest.approx(data["frames_out"] / data["wall_s"])


@pytest.mark.parametrize(
    "kwargs", [{"batch": 0}, {"batch": -1}, {"scale": 0.0}, {"scale": 1.5}, {"queue_depth": 0}]
)
def test_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(PipelineConfigError):
        PipelineConfig(**kwargs)  # type: ignore[arg-type]


def test_cpu_streams_round_trip() -> None:
    from pipelines.cuda_streams import create_streams

    streams = create_streams(torch.device("cpu"))
    arrays = [np.full((4, 5, 3), i, np.uint8) for i in range(3)]
    frames, marker = streams.upload(arrays)
    assert marker.done() and frames.shape == (3, 4, 5, 3)
    host = streams.download(frames, streams.record())
    assert [int(host[i, 0, 0, 0]) for i in range(3)] == [0, 1, 2]


def test_restore_busy_time_is_the_restore_work() -> None:
    """The restore stage's busy time covers the dehazer's work (host time on the CPU; GPU time on CUDA, see
    tests/pipelines/test_cuda_streams.py)."""
    stats = run(ListSource(make_frames(4)), ListSink(), CountingDehazer(delay_s=0.05), PipelineConfig(batch=2))
    assert 0.1 <= stats.extra["restore_busy_s"] < 1.0  # two batches of 50 ms
