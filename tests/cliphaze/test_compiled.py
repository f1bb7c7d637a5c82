"""The dehazer's torch.compile hook: same output as eager, scan kept out of the graph, CUDA graphs on CUDA only."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cliphaze.inference import ClipHazeDehazer, DehazerConfigError
from cliphaze.compiled import COMPILE_MODES, CUDA_GRAPHS, check_compile_mode, compile_forward_fields
from cliphaze.config import VARIANTS
from cliphaze.factory import create_model

FRAME_SIZE = (21, 27)  # odd sides: the padding path runs too


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net(device: str = "cpu", scan_backend: str = "cpu_fused") -> torch.nn.Module:
    """cliphaze-tiny without CLIP inputs (no towers needed); SS2D and CAM still run."""
    base = VARIANTS["cliphaze-tiny"]
    config = base.replace(
        guidance=dataclasses.replace(base.guidance, use_dam=False, use_sam=False),
        ssm=dataclasses.replace(base.ssm, scan_backend=scan_backend),
    )
    torch.manual_seed(0)
    return create_model(config, device=device).eval()


def _frames(device: str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (1, *FRAME_SIZE, 3), dtype=torch.uint8, generator=gen).to(device)


def test_off_is_the_plain_method() -> None:
    net = _net()
    assert compile_forward_fields(net, "off", torch.device("cpu")) == net.forward_fields


def test_compiled_dehazer_matches_eager_and_keeps_the_scan_out_of_the_graph() -> None:
    import torch._dynamo

    net = _net()
    frames = _frames()
    expected = ClipHazeDehazer(net, None).restore(frames, None)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = ClipHazeDehazer(net, None, compile_mode="default", compile_backend="eager")
    first = compiled.restore(frames, None)
    second = compiled.restore(frames, None)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # dynamo really captured graphs
    breaks = torch._dynamo.utils.counters["graph_break"]
    assert breaks, "the scan should be a graph break"
    assert all("disable" in reason for reason in breaks), list(breaks)  # only the scan wrapper, nothing else


@pytest.mark.parametrize("mode", ["reduce-overhead"])
def test_cuda_graphs_need_cuda(mode: str) -> None:
    with pytest.raises(DehazerConfigError, match="CUDA"):
        ClipHazeDehazer(_net(), None, compile_mode=mode)


def test_unknown_mode_is_refused_with_the_known_ones() -> None:
    with pytest.raises(DehazerConfigError, match="compile mode must be one of off, default, reduce-overhead, max-"):
        ClipHazeDehazer(_net(), None, compile_mode="fast")


@pytest.mark.parametrize("mode", [m for m in COMPILE_MODES if m != CUDA_GRAPHS])
def test_every_other_mode_is_accepted_on_cpu(mode: str) -> None:
    check_compile_mode(mode, "eager", torch.device("cpu"))  # raises CompileError otherwise


@pytest.mark.slow
def test_inductor_on_cpu_matches_eager() -> None:
    """Real code generation (gcc) on the CPU: about a minute of compiling on a loaded 2-core runner."""
    import torch._dynamo

    net = _net()
    frames = _frames()
    expected = ClipHazeDehazer(net, None).restore(frames, None)
    torch._dynamo.reset()
    compiled = ClipHazeDehazer(net, None, compile_mode="default")
    out = compiled.restore(frames, None)
    assert (out.int() - expected.int()).abs().max().item() <= 1  # uint8 rounding of float reassociation


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("mode", "backend"),
    [("default", "aot_eager"),
     # inductor code generation: over a minute on an H200 for cliphaze-t (gpu-notes), so not in the 2-minute run
     pytest.param("reduce-overhead", "inductor", marks=pytest.mark.slow)],
)  # fmt: skip
def test_compile_and_cuda_graphs_on_gpu_match_eager(mode: str, backend: str) -> None:
    import torch._dynamo

    net = _net("cuda", scan_backend="auto")
    frames = _frames("cuda")
    expected = ClipHazeDehazer(net, None, device="cuda", cuda_graphs=False).restore(frames, None)
    torch._dynamo.reset()
    compiled = ClipHazeDehazer(net, None, device="cuda", compile_mode=mode, compile_backend=backend)
    for _ in range(3):  # CUDA graphs record on a later call than the first; replays must agree too
        out = compiled.restore(frames, None)
        assert (out.int() - expected.int()).abs().max().item() <= 1


def test_cli_option_reaches_the_dehazer_factory() -> None:
    """``cliphaze dehaze --compile`` exists; the factory refuses it for dehazers without a network, and CUDA
    graphs off CUDA, before loading anything."""
    from click.testing import CliRunner

    from cli import main
    from pipelines.dehazers import DehazerChoice, DehazerChoiceError, create_dehazer

    help_text = CliRunner().invoke(main, ["dehaze", "--help"]).output
    assert "--compile" in help_text and "reduce-overhead" in help_text
    with pytest.raises(DehazerChoiceError, match="cliphaze model"):
        create_dehazer(DehazerChoice("dcp", None, "model: dcp"), torch.device("cpu"), compile_mode="default")
    with pytest.raises(DehazerChoiceError, match="CUDA"):
        create_dehazer(DehazerChoice("cliphaze", None, "x"), torch.device("cpu"), compile_mode="reduce-overhead")
