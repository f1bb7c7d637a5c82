"""Cross-camera batching: same pixels as each camera alone (exactly, on the CPU), real batches, isolation."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cliphaze.baselines.dcp import DarkChannelDehazer
from cliphaze.guidance_types import Guidance
from pipelines.config import PipelineConfigError
from pipelines.dehazers import DehazerChoice, create_dehazer
from pipelines.serve.batcher import BatchConfig, CrossCameraBatcher

CAMERAS = 4
FRAMES = 6


def _clip(seed: int, frames: int = FRAMES, size: tuple[int, int] = (72, 96)) -> torch.Tensor:
    """A hazy-looking clip per camera: smooth gradients plus noise, each camera its own airlight."""
    rng = np.random.default_rng(seed)
    h, w = size
    base = np.linspace(0, 1, w)[None, :, None] * np.array([0.3, 0.5, 0.7])[None, None, :]
    out = []
    for t in range(frames):
        haze = 0.4 + 0.1 * seed + 0.02 * t
        img = (1 - haze) * base + haze * rng.uniform(0.8, 1.0, 3) + rng.normal(0, 0.02, (h, w, 3))
        out.append(np.clip(img * 255, 0, 255).astype(np.uint8))
    return torch.from_numpy(np.stack(out))


def test_batched_cameras_get_exactly_the_pixels_of_each_camera_alone() -> None:
    clips = {f"cam{i}": _clip(i) for i in range(CAMERAS)}
    alone = {}
    for name, clip in clips.items():
        dehazer = DarkChannelDehazer("cpu")  # one instance per camera: the reference
        alone[name] = [dehazer.restore(clip[t : t + 1], None) for t in range(FRAMES)]

    batcher = CrossCameraBatcher(DarkChannelDehazer("cpu"), BatchConfig(max_batch=CAMERAS, max_wait_ms=500))
    views = {name: batcher.attach(name) for name in clips}
    barrier = threading.Barrier(CAMERAS)
    served: dict[str, list[torch.Tensor]] = {name: [] for name in clips}

    def camera(name: str) -> None:
        for t in range(FRAMES):
            barrier.wait()  # all cameras submit together, so each call carries all four
            served[name].append(views[name].restore(clips[name][t : t + 1], None))

    threads = [threading.Thread(target=camera, args=(name,)) for name in clips]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    batcher.close()
    assert batcher.counters.largest == CAMERAS  # really batched across cameras
    assert batcher.counters.frames == CAMERAS * FRAMES
    assert batcher.counters.calls < CAMERAS * FRAMES
    for name in clips:
        for t in range(FRAMES):
            assert torch.equal(served[name][t], alone[name][t]), (name, t)


def test_a_shared_instance_without_camera_ids_would_mix_airlight() -> None:
    """Why restore_streams exists: one EMA over frames of different cameras changes their pixels."""
    clips = [_clip(0, 2), _clip(3, 2)]
    mixed = DarkChannelDehazer("cpu")
    mixed.restore(clips[0][:1], None)
    first_of_b = mixed.restore(clips[1][:1], None)
    assert not torch.equal(first_of_b, DarkChannelDehazer("cpu").restore(clips[1][:1], None))


class _Slow:
    """Records each call's batch size; restoring takes a fixed time."""

    name = "slow"
    device = torch.device("cpu")
    uses_guidance = True

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.sizes: list[int] = []
        self.guidance_batches: list[int] = []

    def encode_guidance(self, frames: torch.Tensor) -> Guidance:
        return Guidance(density=torch.zeros(frames.shape[0], 1, 7, 7))

    def restore(self, frames: torch.Tensor, guidance: Guidance | None, *, scale: float = 1.0) -> torch.Tensor:
        time.sleep(self.delay_s)
        self.sizes.append(frames.shape[0])
        self.guidance_batches.append(0 if guidance is None else guidance.batch_size)
        return frames + 1


def test_a_silent_camera_never_holds_the_others_back() -> None:
    """Two cameras attached, one never sends: the other's frames wait at most max_wait_ms each."""
    dehazer = _Slow()
    batcher = CrossCameraBatcher(dehazer, BatchConfig(max_batch=8, max_wait_ms=20))
    live, _silent = batcher.attach("live"), batcher.attach("silent")
    frames = torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    started = time.perf_counter()
    for _ in range(10):
        assert torch.equal(live.restore(frames, None), frames + 1)
    elapsed = time.perf_counter() - started
    batcher.close()
    assert dehazer.sizes == [1] * 10
    assert elapsed < 10 * 0.020 + 1.0  # bounded by the wait, not by the silent camera


def test_sizes_and_guidance_are_grouped_and_errors_stay_in_their_call() -> None:
    dehazer = _Slow(delay_s=0.05)
    batcher = CrossCameraBatcher(dehazer, BatchConfig(max_batch=8, max_wait_ms=200))
    small, large = torch.zeros(1, 4, 4, 3, dtype=torch.uint8), torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    guide = Guidance(density=torch.zeros(1, 1, 7, 7))
    views = [batcher.attach(f"c{i}") for i in range(3)]
    futures = [batcher.submit("c0", small, guide, 1.0), batcher.submit("c1", large, guide, 1.0),
               batcher.submit("c2", small, guide, 1.0)]  # fmt: skip
    results = [f.result(10)[0] for f in futures]
    assert [r.shape[1] for r in results] == [4, 8, 4]
    assert sorted(dehazer.sizes) == [1, 2] and sorted(dehazer.guidance_batches) == [1, 2]

    def broken(frames: torch.Tensor, guidance: Guidance | None, *, scale: float = 1.0) -> torch.Tensor:
        raise RuntimeError("bad frame")

    dehazer.restore = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="bad frame"):
        views[0].restore(small, None)
    assert batcher.is_alive() and batcher.counters.failures == 1  # the batcher goes on serving
    batcher.close()


def test_batch_config_is_checked() -> None:
    with pytest.raises(PipelineConfigError):
        BatchConfig(max_batch=0)
    with pytest.raises(PipelineConfigError):
        BatchConfig(max_wait_ms=-1)


@pytest.mark.gpu
def test_batched_cameras_on_their_own_cuda_streams_get_the_pixels_of_each_camera_alone() -> None:
    """Each camera uploads on its own stream and reads the result on it: the events order the batch."""
    device = torch.device("cuda")
    clips = {f"cam{i}": _clip(i).to(device) for i in range(CAMERAS)}
    alone = {}
    for name, clip in clips.items():
        dehazer = DarkChannelDehazer(device)
        alone[name] = [dehazer.restore(clip[t : t + 1], None).cpu() for t in range(FRAMES)]
    batcher = CrossCameraBatcher(DarkChannelDehazer(device), BatchConfig(max_batch=CAMERAS, max_wait_ms=500))
    views = {name: batcher.attach(name) for name in clips}
    served: dict[str, list[torch.Tensor]] = {name: [] for name in clips}

    def camera(name: str) -> None:
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            for t in range(FRAMES):
                frame = clips[name][t : t + 1].clone()  # written on this camera's stream just before the call
                served[name].append(views[name].restore(frame, None).cpu())

    threads = [threading.Thread(target=camera, args=(name,)) for name in clips]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    batcher.close()
    for name in clips:
        for t in range(FRAMES):
            diff = (served[name][t].int() - alone[name][t].int()).abs().max().item()
            assert diff <= 1, (name, t, diff)  # CUDA kernels may round differently by batch size


@pytest.mark.slow
def test_cliphaze_cameras_batch_with_their_own_guidance(tmp_path: Path) -> None:
    """CLIPHaze (tiny, random weights): each camera's cached guidance travels with its frames into the shared
    batch, and each gets what its camera alone gets (to rounding: conv kernels may differ by batch size)."""
    fakes = _load_pipeline_fakes()
    dehazer = create_dehazer(DehazerChoice("cliphaze", fakes.make_tiny_bundle(tmp_path), "tiny"), torch.device("cpu"))
    frames = {name: _clip(i, 1, (32, 48)) for i, name in enumerate(("a", "b", "c"))}
    guidance = {name: dehazer.encode_guidance(f) for name, f in frames.items()}
    assert all(g.tokens is not None and g.density is not None for g in guidance.values())
    alone = {name: dehazer.restore(frames[name], guidance[name]) for name in frames}
    batcher = CrossCameraBatcher(dehazer, BatchConfig(max_batch=3, max_wait_ms=2000))
    views = {name: batcher.attach(name) for name in frames}
    futures = {name: batcher.submit(name, frames[name], guidance[name], 1.0) for name in frames}
    served = {name: futures[name].result(60)[0] for name in frames}
    batcher.close()
    assert batcher.counters.largest == 3 and views
    for name in frames:
        diff = (served[name].int() - alone[name].int()).abs().max().item()
        assert diff <= 1, (name, diff)
    assert not torch.equal(served["a"], served["b"])  # not one camera's guidance for all


def _load_pipeline_fakes() -> Any:
    """tests/pipelines/pipeline_fakes.py (its tiny-bundle builder), loaded by path."""
    path = Path(__file__).resolve().parents[1] / "pipeline_fakes.py"
    spec = importlib.util.spec_from_file_location("serve_pipeline_fakes", path)
    assert spec is not None and spec.loader is not None
    if spec.name in sys.modules:
        return sys.modules[spec.name]
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses with string annotations look their module up there
    spec.loader.exec_module(module)
    return module


def test_warm_up_covers_every_batch_size_once_per_frame_size() -> None:
    class Warm(_Slow):
        def __init__(self) -> None:
            super().__init__()
            self.warmed: list[tuple[int, int, int, float]] = []
            self.threads: set[str] = set()

        def warm_up(self, batch: int, height: int, width: int, *, scale: float = 1.0) -> bool:
            self.warmed.append((batch, height, width, scale))
            self.threads.add(threading.current_thread().name)
            return True

    dehazer = Warm()
    batcher = CrossCameraBatcher(dehazer, BatchConfig(max_batch=3))
    a, b = batcher.attach("a"), batcher.attach("b")
    assert a.warm_up(1, 72, 96, scale=0.5) and not b.warm_up(1, 72, 96, scale=0.5)  # the second camera: done
    assert dehazer.warmed == [(1, 72, 96, 0.5), (2, 72, 96, 0.5), (3, 72, 96, 0.5)]
    # On the batcher's own thread, where the batches run: CLIPHaze keeps its CUDA graphs per thread.
    assert dehazer.threads == {f"batcher-{batcher.name}"}
    plain = CrossCameraBatcher(_Slow(), BatchConfig())
    assert not plain.warm_up(72, 96, 1.0)  # nothing to warm up
    plain.close()
    batcher.close()
