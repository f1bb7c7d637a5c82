"""CUDA-graph replay of the restore path: one captured graph per input shape, static buffers, eager fallback.

On a GPU the network is launch-bound at real-time sizes (docs: 480x270 costs 30 ms, 4x the pixels 47 ms),
so the whole restore path (preprocessing, network, guided upsampling, reconstruction, uint8 output) is
captured once per key (batch, H, W, guidance shapes, precision, scale) and replayed: one launch per batch.

* **Static buffers.** Each graph owns its input tensors (frames, density, tokens; guidance always at the
  frame batch, a batch-1 guidance is broadcast into it) and its output. A call copies its inputs in,
  replays, and returns a *copy* of the output, because the next replay overwrites it while the engine's
  download stage may still be reading the previous batch.
* **When.** :meth:`GraphCache.warm_up` captures a key ahead of time (the engine does it at start, from the
  source's frame size, before the first frame is due). Other keys are captured the
  ``CAPTURE_AFTER_CALLS``-th time they are seen (a stream's last, shorter batch stays eager); at most
  ``GRAPH_CACHE_SIZE`` graphs are kept, least recently used first out.
* **Fallback.** Anything that cannot be captured (a host sync such as ``.item()``, a scan backend that
  synchronizes, a CPU tensor) makes the capture fail. Then the cache logs one INFO line saying why and runs
  eagerly from then on: the failure is a property of the code path, not of one shape.

The capture function is injectable (:data:`CaptureFn`), so the bookkeeping is tested on the CPU with a fake
capture; :func:`capture_cuda_graph` is the real one (gpu tests compare its replays with eager calls).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

GRAPH_CACHE_SIZE = 4  # captured graphs kept (each holds its own activation memory: ~5 GiB at 1080p, cliphaze-t)
CAPTURE_AFTER_CALLS = 2  # a key not warmed up is captured on its second call (first calls of a size run eagerly)
WARMUP_CALLS = 3  # eager calls on a side stream before capture (lazy init, cuBLAS/cuDNN plans, Triton autotune)

# One capture at a time in the process: engines sharing a GPU warm up on their own threads, and a capture's
# set-up (device synchronize, cache flush) must not interleave with another capture.
_CAPTURE_LOCK = threading.Lock()

# The graphed function: (frames, density or None, tokens or None, variant) -> output tensor. The tensors are
# the graph's static inputs; ``variant`` is a hashable setting fixed per graph (the dehazer's scale).
RestoreFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None, Hashable], torch.Tensor]


@dataclass
class Captured:
    """A captured graph: ``replay()`` reruns it, reading ``inputs`` and overwriting ``output`` in place."""

    replay: Callable[[], None]
    inputs: tuple[torch.Tensor | None, ...]
    output: torch.Tensor


# (function of the static inputs alone, static inputs) -> Captured; raises if the function cannot be captured.
CaptureFn = Callable[[Callable[..., torch.Tensor], tuple[torch.Tensor | None, ...]], Captured]


def capture_cuda_graph(fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor | None, ...]) -> Captured:
    """Warm ``fn`` up on a side stream, then capture one call of it into a CUDA graph.

    The last warm-up call runs under ``torch.cuda.set_sync_debug_mode("warn")``: a host sync there (``.item()``,
    ``float()``, a pageable copy) would invalidate the capture, so it is refused before capturing, with the
    warning as the reason. (Earlier warm-up calls may synchronize once: lazy initialisation, autotuning.)
    ``capture_error_mode="thread_local"``: the engine's other threads (upload, guidance, download) keep using
    the GPU during a capture; only this thread's unsafe calls invalidate it.

    Raises:
        RuntimeError: ``fn`` cannot be captured (it synchronizes, allocates on the host side, ...).
    """
    with _CAPTURE_LOCK:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS - 1):
                fn(*inputs)
            syncs = _host_syncs(lambda: fn(*inputs))
        torch.cuda.current_stream().wait_stream(side)
        if syncs:
            raise RuntimeError(f"the restore path synchronizes with the host: {syncs[0]}")
        graph = torch.cuda.CUDAGraph()
        # Our own capture stream: torch's default one is shared by every thread.
        with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
            output = fn(*inputs)
    return Captured(replay=graph.replay, inputs=inputs, output=output)


def rerun_capture(fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor | None, ...]) -> Captured:
    """A stand-in for :func:`capture_cuda_graph` on any device: "replay" reruns ``fn`` on the static inputs into
    the static output. It exercises the cache's bookkeeping (keys, static buffers, copies) without CUDA."""
    output = fn(*inputs)
    return Captured(replay=lambda: output.copy_(fn(*inputs)), inputs=inputs, output=output)


def _host_syncs(call: Callable[[], object]) -> list[str]:
    """Run ``call`` with CUDA sync debugging on "warn"; the first lines of the sync warnings it raised.

    ``set_sync_debug_mode`` is process-wide; "warn" (not "error") so that another thread's legitimate sync in
    the meantime (the engine's download) only warns. The warnings are recorded here, not shown.
    """
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]


def _static_like(tensor: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """A zeroed buffer shaped like ``tensor`` at batch ``batch``."""
    if tensor is None:
        return None
    return torch.zeros((batch, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)


def input_key(frames: torch.Tensor, density: torch.Tensor | None, tokens: torch.Tensor | None,
              variant: Hashable) -> tuple[Hashable, ...]:  # fmt: skip
    """What a graph is specific to: input shapes (guidance at the frame batch), dtypes, device, ``variant``."""

    def spec(t: torch.Tensor | None) -> Hashable:
        return None if t is None else (tuple(t.shape[1:]), t.dtype)

    return (tuple(frames.shape), frames.dtype, str(frames.device), spec(density), spec(tokens), variant)


class GraphCache:
    """Captured graphs of one function, by key (see module docstring). One owner thread; not thread-safe.

    Args:
        fn: the function to graph; must read only its arguments and the module state it closes over.
        tag: part of every key (the dehazer's precision), so graphs of different settings never mix.
        capture: :func:`capture_cuda_graph`, or a fake in CPU tests.
        capacity: graphs kept.
        capture_after_calls: calls of a key (not warmed up) before it is captured.
    """

    def __init__(self, fn: RestoreFn, *, tag: Hashable = None, capture: CaptureFn = capture_cuda_graph,
                 capacity: int = GRAPH_CACHE_SIZE, capture_after_calls: int = CAPTURE_AFTER_CALLS) -> None:  # fmt: skip
        self.fn = fn
        self.tag = tag
        self.capture = capture
        self.capacity = capacity
        self.capture_after_calls = capture_after_calls
        self.graphs: OrderedDict[Hashable, Captured] = OrderedDict()
        self.calls: dict[Hashable, int] = {}
        self.disabled: str | None = None  # why graphs are off (a capture failed); None while they are on
        self.replays = 0
        self.captures = 0

    def _capture(self, key: Hashable, frames: torch.Tensor, density: torch.Tensor | None,
                 tokens: torch.Tensor | None, variant: Hashable) -> Captured | None:  # fmt: skip
        batch = frames.shape[0]
        inputs = (_static_like(frames, batch), _static_like(density, batch), _static_like(tokens, batch))
        for static, value in zip(inputs, (frames, density, tokens), strict=True):
            if static is not None and value is not None:
                static.copy_(value)  # real values: warm-up and capture see realistic data (and guidance)
        try:
            captured = self.capture(lambda *static: self.fn(*static, variant), inputs)
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            self.disabled = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self.graphs.clear()
            logger.info("CUDA graph capture of the restore path failed (%s); running it eagerly", self.disabled)
            return None
        self.captures += 1
        self.graphs[key] = captured
        while len(self.graphs) > self.capacity:
            self.graphs.popitem(last=False)
        return captured

    def warm_up(self, frames: torch.Tensor, density: torch.Tensor | None, tokens: torch.Tensor | None,
                variant: Hashable = None) -> bool:  # fmt: skip
        """Capture the key of these inputs now (before the first real call). True when a graph is ready."""
        if self.disabled is not None:
            return False
        density, tokens = _at_batch(density, frames.shape[0]), _at_batch(tokens, frames.shape[0])
        key = (self.tag, *input_key(frames, density, tokens, variant))
        if key in self.graphs:
            return True
        return self._capture(key, frames, density, tokens, variant) is not None

    def __call__(self, frames: torch.Tensor, density: torch.Tensor | None, tokens: torch.Tensor | None,
                 variant: Hashable = None) -> torch.Tensor:  # fmt: skip
        """``fn(frames, density, tokens, variant)``, by graph replay when its key is captured (or due), else
        eagerly. A batch-1 ``density``/``tokens`` is broadcast to the frame batch (as the network does itself).
        """
        if self.disabled is not None:
            return self.fn(frames, density, tokens, variant)
        density, tokens = _at_batch(density, frames.shape[0]), _at_batch(tokens, frames.shape[0])
        key = (self.tag, *input_key(frames, density, tokens, variant))
        captured = self.graphs.get(key)
        if captured is None:
            self.calls[key] = self.calls.get(key, 0) + 1
            if self.calls[key] < self.capture_after_calls:
                return self.fn(frames, density, tokens, variant)
            captured = self._capture(key, frames, density, tokens, variant)
            if captured is None:
                return self.fn(frames, density, tokens, variant)
        self.graphs.move_to_end(key)
        for static, value in zip(captured.inputs, (frames, density, tokens), strict=True):
            if static is not None and value is not None:
                static.copy_(value)
        captured.replay()
        self.replays += 1
        return captured.output.clone()  # the next replay overwrites the static output


def _at_batch(tensor: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """Guidance of batch 1 broadcast (a view) to ``batch``; other batches unchanged."""
    if tensor is None or tensor.shape[0] == batch:
        return tensor
    return tensor.expand(batch, *tensor.shape[1:])
