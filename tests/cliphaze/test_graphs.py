"""Graph-captured restore (cliphaze.graphs): bookkeeping on the CPU with a fake capture, the real thing on a GPU."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import pytest
import torch

from cliphaze.config import VARIANTS
from cliphaze.factory import create_model
from cliphaze.graphs import Captured, GraphCache, rerun_capture
from cliphaze.inference import ClipHazeDehazer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAME_SIZE = (21, 27)  # odd sides: the padding path runs too


fake_capture = rerun_capture  # what a CUDA graph does, on the CPU


def failing_capture(fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor | None, ...]) -> Captured:
    raise RuntimeError("operation not permitted when stream is capturing\nmore detail")


def _net(device: str = "cpu", scan_backend: str = "cpu_fused", guided: bool = False) -> torch.nn.Module:
    base = VARIANTS["cliphaze-tiny"]
    config = base.replace(ssm=dataclasses.replace(base.ssm, scan_backend=scan_backend))
    if not guided:
        config = config.replace(guidance=dataclasses.replace(base.guidance, use_dam=False, use_sam=False))
    torch.manual_seed(0)
    return create_model(config, device=device).eval()


def _frames(batch: int, seed: int, device: str = "cpu", size: tuple[int, int] = FRAME_SIZE) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, *size, 3), dtype=torch.uint8, generator=gen).to(device)


def _counting(fn: Callable[..., torch.Tensor]) -> tuple[Callable[..., torch.Tensor], list[tuple]]:
    calls: list[tuple] = []

    def wrapped(frames: torch.Tensor, density: torch.Tensor | None, tokens: torch.Tensor | None,
                variant: object) -> torch.Tensor:  # fmt: skip
        calls.append((tuple(frames.shape), variant))
        return fn(frames, density, tokens, variant)

    return wrapped, calls


def _double(frames: torch.Tensor, density: torch.Tensor | None, tokens: torch.Tensor | None,
            variant: object) -> torch.Tensor:  # fmt: skip
    out = frames.float() * 2
    return out if density is None else out + density.float().mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)


def test_graphed_dehazer_equals_eager_over_many_calls_and_sizes() -> None:
    """Replays read the new inputs (static buffers are refilled), outputs are copies, a batch-1 guidance
    broadcasts, and the network ran once per capture plus once per replay, never more."""
    net = _net()
    eager = ClipHazeDehazer(net, None)
    graphed = ClipHazeDehazer(net, None, graph_capture=fake_capture)
    assert eager.graphs is None and graphed.graphs is not None
    assert graphed.warm_up(2, *FRAME_SIZE, scale=1.0)
    outs = []
    for seed in range(3):
        frames = _frames(2, seed)
        out = graphed.restore(frames, None)
        assert torch.equal(out, eager.restore(frames, None))
        outs.append(out)
    assert not torch.equal(outs[0], outs[1])  # each call returned its own copy, not the static output
    assert graphed.graphs.captures == 1 and graphed.graphs.replays == 3
    small = _frames(1, 7, size=(16, 20))
    for _ in range(2):  # a size not warmed up: eager first, captured on the second call
        assert torch.equal(graphed.restore(small, None, scale=0.5), eager.restore(small, None, scale=0.5))
    assert graphed.graphs.captures == 2 and graphed.graphs.replays == 4


def test_guidance_of_batch_one_and_batch_n_share_a_graph() -> None:
    cache = GraphCache(_double, capture=fake_capture)
    frames = _frames(3, 0)
    one = torch.rand(1, 1, 7, 7)
    per_frame = torch.rand(3, 1, 7, 7)
    assert cache.warm_up(frames, one, None)
    torch.testing.assert_close(cache(frames, one, None), _double(frames, one.expand(3, -1, -1, -1), None, None))
    torch.testing.assert_close(cache(frames, per_frame, None), _double(frames, per_frame, None, None))
    assert cache.captures == 1 and cache.replays == 2


def test_keys_are_per_shape_variant_and_tag_and_the_oldest_graph_goes_first() -> None:
    fn, calls = _counting(_double)
    cache = GraphCache(fn, tag="bf16", capture=fake_capture, capacity=2, capture_after_calls=1)
    a, b, c = _frames(1, 0), _frames(2, 0), _frames(1, 0, size=(8, 8))
    cache(a, None, None, 1.0)
    cache(b, None, None, 1.0)
    cache(a, None, None, 0.5)  # same shape, other variant: a third graph, the first one (a at 1.0) is dropped
    assert cache.captures == 3 and len(cache.graphs) == 2
    assert [key[0] for key in cache.graphs] == ["bf16", "bf16"]
    assert [key[-1] for key in cache.graphs] == [1.0, 0.5]
    cache(c, None, None, 1.0)
    assert len(cache.graphs) == 2 and cache.captures == 4
    assert calls[-1] == ((1, 8, 8, 3), 1.0)


def test_a_failed_capture_says_why_once_and_runs_eagerly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cliphaze.graphs")
    net = _net()
    eager = ClipHazeDehazer(net, None)
    dehazer = ClipHazeDehazer(net, None, graph_capture=failing_capture)
    assert dehazer.warm_up(1, *FRAME_SIZE) is False
    for seed in range(3):
        frames = _frames(1, seed)
        assert torch.equal(dehazer.restore(frames, None), eager.restore(frames, None))
    said = [r.getMessage() for r in caplog.records if r.name == "cliphaze.graphs"]
    assert said == ["CUDA graph capture of the restore path failed (RuntimeError: operation not permitted when "
                    "stream is capturing); running it eagerly"]  # fmt: skip
    assert dehazer.graphs is not None and dehazer.graphs.captures == 0


def test_cpu_dehazer_stays_eager() -> None:
    dehazer = ClipHazeDehazer(_net(), None)
    assert dehazer.graphs is None and dehazer.warm_up(2, *FRAME_SIZE) is False


# ---- on a GPU: the real capture ------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_replay_equals_eager(precision: str) -> None:
    """Real CUDA graphs (the scan backend ``auto`` picks on CUDA): replays equal eager calls exactly."""
    net = _net("cuda", scan_backend="auto")
    eager = ClipHazeDehazer(net, None, device="cuda", precision=precision, cuda_graphs=False)
    graphed = ClipHazeDehazer(net, None, device="cuda", precision=precision)
    if not graphed.warm_up(2, *FRAME_SIZE, scale=0.5):
        pytest.fail(f"restore could not be captured: {graphed.graphs.disabled if graphed.graphs else 'graphs off'}")
    for seed in range(3):
        frames = _frames(2, seed, "cuda")
        want = eager.restore(frames, None, scale=0.5)
        got = graphed.restore(frames, None, scale=0.5)
        assert torch.equal(got, want), int((got.int() - want.int()).abs().max())
    assert graphed.graphs is not None and graphed.graphs.replays == 3


@pytest.mark.gpu
def test_restore_makes_no_host_sync() -> None:
    """Eager restore, guidance included and batch 2 at half scale, under sync-debug "error": a host sync
    (``.item()``, ``float()``, a pageable upload) raises."""
    net = _net("cuda", scan_backend="auto")
    dehazer = ClipHazeDehazer(net, None, device="cuda", precision="bf16", cuda_graphs=False)
    frames = _frames(2, 0, "cuda")
    dehazer.restore(frames, None, scale=0.5)  # first call: lazy initialisation may synchronize once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            out = dehazer.restore(frames, None, scale=0.5)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.shape == frames.shape and out.is_cuda


@pytest.mark.gpu
def test_dcp_restore_and_guidance_cache_make_no_host_sync() -> None:
    from pipelines.config import GuidanceCacheConfig
    from pipelines.cuda_streams import create_streams
    from pipelines.guidance_cache import GuidanceCache

    from cliphaze.baselines.dcp import DarkChannelDehazer

    dcp = DarkChannelDehazer("cuda")
    frames = _frames(2, 0, "cuda", size=(90, 160))
    host = list(frames.cpu().numpy())
    cache = GuidanceCache(dcp, GuidanceCacheConfig(refresh_every=1), create_streams(torch.device("cuda")))
    dcp.restore(frames, None)
    cache.guidance_for(frames, host)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            dcp.restore(frames, None)
            cache.guidance_for(frames, host)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_each_thread_replays_its_own_graphs() -> None:
    """Engines sharing one dehazer (``--streams N``) restore on their own threads and streams: they must not
    share static buffers."""
    import threading

    dehazer = ClipHazeDehazer(_net(), None, graph_capture=fake_capture)
    mine = dehazer.graphs
    theirs: list[object] = []
    thread = threading.Thread(target=lambda: theirs.append(dehazer.graphs))
    thread.start()
    thread.join()
    assert mine is dehazer.graphs and theirs[0] is not None and theirs[0] is not mine


@pytest.mark.gpu
def test_a_host_sync_is_refused_before_capture_and_cuda_keeps_working(caplog: pytest.LogCaptureFixture) -> None:
    """A restore path with ``.item()`` cannot be captured: the warm-up sees the sync, no capture is attempted,
    the call runs eagerly, and CUDA work goes on."""
    caplog.set_level(logging.INFO, logger="cliphaze.graphs")

    def syncing(frames: torch.Tensor, density: torch.Tensor | None, tokens: torch.Tensor | None,
                variant: object) -> torch.Tensor:  # fmt: skip
        return frames.float() * float(frames.float().mean().item() > -1)

    cache = GraphCache(syncing)
    frames = _frames(2, 0, "cuda")
    assert not cache.warm_up(frames, None, None)
    assert cache.disabled is not None and "synchronizes with the host" in cache.disabled
    torch.testing.assert_close(cache(frames, None, None), frames.float())
    assert any("running it eagerly" in r.getMessage() for r in caplog.records)
    assert torch.cuda.is_available() and (torch.ones(3, device="cuda") * 2).sum().item() == 6.0
