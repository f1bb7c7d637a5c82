"""Stream and event plumbing of the engine: CUDA streams on a GPU, a no-op twin on the CPU.

On CUDA there are three streams: ``copy`` (host <-> device copies, high priority), ``compute``
(restoration, high priority) and ``guidance`` (CLIP refreshes, low priority, so restoration never
queues behind CLIP). Work is ordered with :class:`Marker` (a recorded event). Host buffers come from
PyTorch's pinned caching allocator (``pin_memory=True``), which only recycles a block once the
copies recorded on it have finished. Tensors that cross streams are ``record_stream``-ed so the
device allocator does not recycle them early.

The CPU twin has the same methods, runs everything in place and its markers are always done, so the
stages are the same code on both paths.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

# CUDA stream priorities: lower is more urgent; out-of-range values are clamped by the driver.
HIGH_PRIORITY = -1
LOW_PRIORITY = 0


class Marker(Protocol):
    """A point in a stream's work."""

    def done(self) -> bool:
        """True when the work before the marker has finished (never blocks)."""
        ...

    def wait(self) -> None:
        """Make the current stream wait for the marker (does not block the host)."""
        ...

    def synchronize(self) -> None:
        """Block the host until the marker is reached."""
        ...


class DoneMarker:
    """CPU work is synchronous: every marker is already reached."""

    def done(self) -> bool:
        return True

    def wait(self) -> None:
        return None

    def synchronize(self) -> None:
        return None


class EventMarker:
    """A CUDA event recorded on the current stream at construction."""

    def __init__(self) -> None:
        self.event = torch.cuda.Event()
        self.event.record()

    def done(self) -> bool:
        return bool(self.event.query())

    def wait(self) -> None:
        torch.cuda.current_stream().wait_event(self.event)

    def synchronize(self) -> None:
        self.event.synchronize()


class Timer(Protocol):
    """Busy time of work launched between construction and :meth:`stop`, on the stream current at both."""

    def stop(self) -> None: ...

    def seconds(self) -> float:
        """Seconds between start and stop; call only once the work before ``stop`` has finished."""
        ...


class HostTimer:
    """CPU work is synchronous: host time is the work's time."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._stop = self._start

    def stop(self) -> None:
        self._stop = time.perf_counter()

    def seconds(self) -> float:
        return self._stop - self._start


class EventTimer:
    """GPU time from two timing events (host time would only measure how long the launches took to enqueue)."""

    def __init__(self) -> None:
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self._start.record()

    def stop(self) -> None:
        self._end.record()

    def seconds(self) -> float:
        return self._start.elapsed_time(self._end) / 1000.0  # ms; does not synchronize (the end is reached)


def _stack(arrays: Sequence[np.ndarray], out: torch.Tensor) -> torch.Tensor:
    """Copy (H, W, 3) uint8 arrays into ``out`` (N, H, W, 3)."""
    view = out.numpy()
    for i, array in enumerate(arrays):
        view[i] = array
    return out


class CpuStreams:
    """The CPU twin: no streams, synchronous copies, markers always done."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def copy(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def compute(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def guidance(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def record(self) -> Marker:
        return DoneMarker()

    def timer(self) -> Timer:
        return HostTimer()

    def upload(self, arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, Marker]:
        """(H, W, 3) uint8 arrays -> (N, H, W, 3) uint8 tensor on the device (zero-copy for one frame)."""
        if len(arrays) == 1:
            return torch.from_numpy(np.ascontiguousarray(arrays[0])[None]), DoneMarker()
        out = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.uint8)
        return _stack(arrays, out), DoneMarker()

    def download(self, frames: torch.Tensor, after: Marker) -> torch.Tensor:
        """(N, H, W, 3) uint8 device tensor -> contiguous host tensor (ready to read)."""
        return frames.contiguous()

    def to_compute(self, *tensors: torch.Tensor | None) -> None:
        """Nothing to do: there is one (implicit) stream."""


class CudaStreams:
    """Copy, compute and guidance streams on one CUDA device (see module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        with torch.cuda.device(device):
            self._copy = torch.cuda.Stream(priority=HIGH_PRIORITY)
            self._compute = torch.cuda.Stream(priority=HIGH_PRIORITY)
            self._guidance = torch.cuda.Stream(priority=LOW_PRIORITY)

    @contextlib.contextmanager
    def _on(self, stream: torch.cuda.Stream) -> Iterator[None]:
        with torch.cuda.device(self.device), torch.cuda.stream(stream):
            yield

    def copy(self) -> contextlib.AbstractContextManager[None]:
        return self._on(self._copy)

    def compute(self) -> contextlib.AbstractContextManager[None]:
        return self._on(self._compute)

    def guidance(self) -> contextlib.AbstractContextManager[None]:
        return self._on(self._guidance)

    def record(self) -> Marker:
        """Marker on the current stream (call inside one of the stream contexts)."""
        return EventMarker()

    def timer(self) -> Timer:
        """Timer on the current stream (call inside one of the stream contexts)."""
        return EventTimer()

    def upload(self, arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, Marker]:
        """Stack into a pinned buffer, copy to the device on the copy stream; the marker ends the copy."""
        host = _stack(arrays, torch.empty((len(arrays), *arrays[0].shape), dtype=torch.uint8, pin_memory=True))
        with self.copy():
            frames = host.to(self.device, non_blocking=True)
            marker = self.record()
        # Used on the compute and guidance streams after the copy stream allocated it.
        frames.record_stream(self._compute)
        frames.record_stream(self._guidance)
        return frames, marker

    def to_compute(self, *tensors: torch.Tensor | None) -> None:
        """Tell the allocator that tensors made on the guidance stream are used on the compute stream."""
        for tensor in tensors:
            if tensor is not None:
                tensor.record_stream(self._compute)

    def download(self, frames: torch.Tensor, after: Marker) -> torch.Tensor:
        """Copy to a pinned host tensor on the copy stream once ``after`` is reached; blocks until done."""
        with self.copy():
            after.wait()
            frames.record_stream(self._copy)
            host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
            host.copy_(frames, non_blocking=True)
            marker = self.record()
        marker.synchronize()
        return host


Streams = CpuStreams | CudaStreams


def create_streams(device: torch.device) -> Streams:
    """CUDA streams for a CUDA device, the CPU twin otherwise."""
    return CudaStreams(device) if device.type == "cuda" else CpuStreams(device)
