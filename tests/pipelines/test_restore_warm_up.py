"""The engine warms the dehazer up (CUDA graph capture) for the source's frame size before the first batch."""

from __future__ import annotations

import torch
from pipeline_fakes import CountingDehazer, ListSink, ListSource, make_frames

from cliphaze.guidance_types import Guidance
from pipelines.config import PipelineConfig
from pipelines.runner import run


class WarmingDehazer(CountingDehazer):
    """Records warm-up and restore calls in order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple] = []

    def warm_up(self, batch: int, height: int, width: int, *, scale: float = 1.0) -> bool:
        self.events.append(("warm_up", batch, height, width, scale))
        return True

    def restore(self, frames: torch.Tensor, guidance: Guidance | None, *, scale: float = 1.0) -> torch.Tensor:
        self.events.append(("restore", frames.shape[0]))
        return super().restore(frames, guidance, scale=scale)


def test_warm_up_gets_batch_size_and_scale_before_the_first_restore() -> None:
    dehazer = WarmingDehazer()
    run(ListSource(make_frames(5, width=40, height=30), live=True), ListSink(), dehazer,
        PipelineConfig(batch=2, scale=0.5))  # fmt: skip
    assert dehazer.events[0] == ("warm_up", 2, 30, 40, 0.5)
    assert [e[0] for e in dehazer.events[1:]] == ["restore"] * (len(dehazer.events) - 1) and len(dehazer.events) > 1


def test_dehazers_without_warm_up_run_as_before() -> None:
    sink = ListSink()
    run(ListSource(make_frames(3)), sink, CountingDehazer(), PipelineConfig())
    assert len(sink.frames) == 3
