"""Optional ``torch.compile`` of the network's forward (issue 5/7: compile and CUDA graphs for fixed shapes).

Modes are torch.compile's: ``"default"`` (inductor kernels), ``"max-autotune"`` (slower compile, tuned
kernels; CUDA graphs on a GPU) and ``"reduce-overhead"`` (CUDA graphs: replays the whole launch sequence;
CUDA only). ``"off"`` returns the plain method. Shapes are static (``dynamic=False``): a video has one frame
size, and a new size (or batch) recompiles once; the first call of each shape pays the compile.

The selective-scan kernels stay outside the graph (see :func:`cliphaze.ops.selective_scan_outside_graph`).
torch._dynamo is imported only when a mode other than ``"off"`` is asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from cliphaze.run_options import COMPILE_MODES, CUDA_GRAPHS, OFF

if TYPE_CHECKING:
    from cliphaze.model import ClipHazeNet

logger = logging.getLogger(__name__)

COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")  # aot_eager/eager: fast to build (tests, debugging)


class CompileError(ValueError):
    """A compile mode that does not exist or cannot run on the device."""


def check_compile_mode(mode: str, backend: str, device: torch.device) -> None:
    """Raise :class:`CompileError` for an unknown mode/backend, or CUDA graphs off a CUDA device."""
    if mode not in COMPILE_MODES:
        raise CompileError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if backend not in COMPILE_BACKENDS:
        raise CompileError(f"compile backend must be one of {', '.join(COMPILE_BACKENDS)}, got {backend!r}")
    if mode == CUDA_GRAPHS and device.type != "cuda":
        raise CompileError(f"compile mode {CUDA_GRAPHS!r} records CUDA graphs and needs a CUDA device, not {device}")


def compile_forward_fields(
    net: ClipHazeNet, mode: str, device: torch.device, backend: str = "inductor"
) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``net.forward_fields``, compiled per ``mode`` (``"off"``: the method itself).

    Args:
        net: the network (eval mode, on ``device``).
        mode: one of ``COMPILE_MODES``.
        device: where the network runs (CUDA graphs need CUDA).
        backend: torch.compile backend; ``inductor`` generates kernels, ``aot_eager`` only traces.

    Returns:
        A callable with ``forward_fields``'s signature: (x, density, tokens) -> (K, Bb).

    Raises:
        CompileError: unknown mode/backend, or CUDA graphs on a non-CUDA device.
    """
    check_compile_mode(mode, backend, device)
    if mode == OFF:
        return net.forward_fields
    from cliphaze.ops import selective_scan_outside_graph

    selective_scan_outside_graph()  # build the wrapper now: tracing must only read it
    options: dict[str, Any] = {"dynamic": False, "fullgraph": False, "backend": backend}
    if backend == "inductor":
        options["mode"] = mode
    logger.info("torch.compile of %s: mode %s, backend %s (first frame of each size compiles)",
                net.config.name, mode, backend)  # fmt: skip
    return torch.compile(net.forward_fields, **options)
