"""Cross-camera batching: many cameras' frames through one shared dehazer, in as few calls as possible.

Each camera's engine (``pipelines.runner.run``) sees a :class:`CameraDehazer`, an ordinary ``Dehazer`` whose
``restore`` hands the frames to the shared :class:`CrossCameraBatcher` and waits for its own result. The
batcher's thread takes the oldest request, adds every other waiting request of the same frame size,
scale and guidance layout, up to ``max_batch`` frames, and waits at most ``max_wait_ms`` for more, but not at
all once every attached camera has a request in (each camera has at most one in flight, so waiting longer
could only add latency). One ``restore`` call then serves them all; results go back per camera.

Isolation: nothing waits for a particular camera. A camera that stalls simply has no request in the next
batch; a request that cannot be batched (another size) goes in its own call. An error in a call fails the
requests of that call only, and the cameras concerned restart on their own.

Streams: on CUDA each camera's engine has its own streams; a request carries an event recorded on the
camera's stream (the batch waits for it before reading the frames) and the result carries one recorded after
the batch (the camera's stream waits for it before reading the result). On the CPU both are no-ops.

Per-camera state: guidance is cached per camera by each engine (it is per scene) and travels with the
request. Dehazers with per-stream state (dcp's airlight EMA) implement ``restore_streams``, which keeps
one state per camera, so a batched frame gets exactly the pixels it gets when its camera runs alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from cliphaze.dehazer import Dehazer
from cliphaze.guidance_types import Guidance
from pipelines.config import PipelineConfigError
from pipelines.cuda_streams import DoneMarker, EventMarker, Marker

logger = logging.getLogger(__name__)

MS_PER_S = 1000.0
IDLE_POLL_S = 0.1  # how often an idle batcher thread re-checks its stop flag


@runtime_checkable
class MultiStreamDehazer(Protocol):
    """A dehazer with per-stream state that can restore a batch mixing streams (``DarkChannelDehazer``)."""

    def restore_streams(self, frames: torch.Tensor, streams: Sequence[Hashable] | None, *,
                        scale: float = 1.0) -> torch.Tensor: ...  # fmt: skip


@dataclass(frozen=True)
class BatchConfig:
    """How frames of different cameras are grouped."""

    max_batch: int = 8  # most frames per restore call
    max_wait_ms: float = 5.0  # longest wait for more cameras' frames before running a partial batch

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise PipelineConfigError(f"max batch must be >= 1, got {self.max_batch}")
        if not 0.0 <= self.max_wait_ms < 10_000.0:
            raise PipelineConfigError(f"max wait must be in [0, 10000) ms, got {self.max_wait_ms}")


@dataclass
class _Request:
    camera: str
    frames: torch.Tensor  # (N, H, W, 3) uint8 on the device
    guidance: Guidance | None  # batch N (expanded from 1 when needed) or None
    scale: float
    ready: Marker  # the camera's stream reached the frames (and their guidance): the batch may read them
    future: Future[tuple[torch.Tensor, Marker]] = field(default_factory=Future)  # restored frames, when written

    @property
    def key(self) -> tuple[object, ...]:
        g = self.guidance
        layout = None if g is None else (g.density is not None, g.tokens is not None,
                                         None if g.tokens is None else tuple(g.tokens.shape[1:]))  # fmt: skip
        return tuple(self.frames.shape[1:]), self.scale, layout


@dataclass
class BatchCounters:
    """What the batcher did so far (a snapshot is taken under its lock)."""

    calls: int = 0  # restore calls
    frames: int = 0  # frames restored
    largest: int = 0  # most frames in one call
    failures: int = 0  # calls that raised


class CrossCameraBatcher:
    """One thread that restores the frames of many cameras through one dehazer (see module docstring)."""

    def __init__(self, dehazer: Dehazer, config: BatchConfig, name: str = "") -> None:
        self.dehazer = dehazer
        self.config = config
        self.name = name or dehazer.name
        self.counters = BatchCounters()
        self._lock = threading.Condition()
        self._pending: deque[_Request] = deque()
        self._cameras: set[str] = set()
        self._guidance_lock = threading.Lock()  # encode_guidance calls of different cameras take turns
        self._warmed: set[tuple[int, int, float]] = set()  # (height, width, scale) already warmed up
        # Warm-ups run on the batcher's thread: a CLIPHaze dehazer keeps its CUDA graphs per thread, and the
        # batches replay them on this one.
        self._warm_ups: deque[tuple[tuple[int, int, float], Future[bool]]] = deque()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{self.name}", daemon=True)
        self._thread.start()

    # --- camera side ----------------------------------------------------------------------------------

    def attach(self, camera: str) -> CameraDehazer:
        """The ``Dehazer`` a camera's engine uses; call :meth:`detach` when the camera stops."""
        with self._lock:
            self._cameras.add(camera)
        return CameraDehazer(self, camera)

    def detach(self, camera: str) -> None:
        with self._lock:
            self._cameras.discard(camera)
            self._lock.notify_all()

    @property
    def cameras(self) -> int:
        with self._lock:
            return len(self._cameras)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def encode_guidance(self, frames: torch.Tensor) -> Guidance:
        with self._guidance_lock:
            return self.dehazer.encode_guidance(frames)

    def submit(self, camera: str, frames: torch.Tensor, guidance: Guidance | None,
               scale: float) -> Future[tuple[torch.Tensor, Marker]]:  # fmt: skip
        """Queue frames for the next batch.

        Call on the camera's stream (the engine's compute stream): on CUDA the batch waits for what that
        stream queued so far. The future gives the restored (N, H, W', 3) uint8 and a marker to ``wait`` for
        before reading them, or the call's exception.
        """
        if guidance is not None and guidance.batch_size == 1 and frames.shape[0] > 1:
            guidance = guidance.expand(frames.shape[0])
        ready = EventMarker() if frames.device.type == "cuda" else DoneMarker()
        request = _Request(camera, frames, guidance, scale, ready)
        with self._lock:
            if self._stop:
                raise RuntimeError(f"batcher {self.name} is closed")
            self._pending.append(request)
            self._lock.notify_all()
        return request.future

    def warm_up(self, height: int, width: int, scale: float) -> bool:
        """Warm the shared dehazer up for every batch size a batch of this frame size can have (1 to
        ``max_batch``: how many cameras' frames meet varies), once per size. Dehazers without ``warm_up``
        (dcp, none, or a CLIPHaze build without CUDA graphs) have nothing to do. True when something was done.
        """
        if getattr(self.dehazer, "warm_up", None) is None:
            return False
        done: Future[bool] = Future()
        with self._lock:
            if self._stop:
                return False
            self._warm_ups.append(((height, width, scale), done))
            self._lock.notify_all()
        return done.result()

    def _warm_up_now(self, key: tuple[int, int, float]) -> bool:
        """On the batcher thread: every batch size of ``key``'s frame size, once per size."""
        if key in self._warmed:
            return False
        height, width, scale = key
        warm = self.dehazer.warm_up  # type: ignore[attr-defined]
        did = [bool(warm(n, height, width, scale=scale)) for n in range(1, self.config.max_batch + 1)]
        self._warmed.add(key)
        return any(did)

    def close(self) -> None:
        """Stop after the requests already queued are served."""
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        self._thread.join()

    # --- batcher thread ---------------------------------------------------------------------------------

    def _take(self) -> list[_Request] | None:
        """The next batch: the oldest request plus compatible ones, after waiting at most ``max_wait_ms``."""
        with self._lock:
            while not self._pending:
                if self._warm_ups:
                    return []  # the loop runs the warm-ups first
                if self._stop:
                    return None
                self._lock.wait(IDLE_POLL_S)
            first = self._pending.popleft()
            batch, size = [first], first.frames.shape[0]
            deadline = time.perf_counter() + self.config.max_wait_ms / MS_PER_S
            while size < self.config.max_batch:
                for request in list(self._pending):
                    n = request.frames.shape[0]
                    if request.key == first.key and size + n <= self.config.max_batch:
                        self._pending.remove(request)
                        batch.append(request)
                        size += n
                waiting = len({r.camera for r in batch})
                left_s = deadline - time.perf_counter()
                if size >= self.config.max_batch or waiting >= len(self._cameras) or left_s <= 0 or self._stop:
                    break
                self._lock.wait(left_s)
            return batch

    def _run(self, batch: list[_Request]) -> None:
        on_cuda = batch[0].frames.device.type == "cuda"
        for request in batch:
            request.ready.wait()  # this thread's stream waits for each camera's upload and guidance
            if on_cuda:  # the cameras' tensors are read on this stream: keep the allocator from recycling them
                request.frames.record_stream(torch.cuda.current_stream())
        frames = batch[0].frames if len(batch) == 1 else torch.cat([r.frames for r in batch])
        guides = [r.guidance for r in batch if r.guidance is not None]  # all or none: guidance layout is in the key
        guidance = None if not guides else guides[0] if len(guides) == 1 else Guidance.cat(guides)
        scale = batch[0].scale
        if isinstance(self.dehazer, MultiStreamDehazer):
            streams = [r.camera for r in batch for _ in range(r.frames.shape[0])]
            restored = self.dehazer.restore_streams(frames, streams, scale=scale)
        else:
            restored = self.dehazer.restore(frames, guidance, scale=scale)
        done = EventMarker() if on_cuda else DoneMarker()
        start = 0
        for request in batch:
            n = request.frames.shape[0]
            request.future.set_result((restored[start : start + n], done))
            start += n
        with self._lock:
            self.counters.calls += 1
            self.counters.frames += start
            self.counters.largest = max(self.counters.largest, start)

    def _run_warm_ups(self) -> None:
        while True:
            with self._lock:
                if not self._warm_ups:
                    return
                key, done = self._warm_ups.popleft()
            try:
                done.set_result(self._warm_up_now(key))
            except Exception as exc:  # worker-thread boundary: the camera that asked gets the error
                done.set_exception(exc)

    def _loop(self) -> None:
        while True:
            self._run_warm_ups()
            batch = self._take()
            if batch is None:
                return
            if not batch:
                continue
            try:
                self._run(batch)
            except Exception as exc:  # worker-thread boundary: the cameras of this call get the error
                with self._lock:
                    self.counters.failures += 1
                cameras = sorted({r.camera for r in batch})
                logger.debug("batch for %s failed: %s", ", ".join(cameras), exc, exc_info=True)
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)


class CameraDehazer:
    """The ``Dehazer`` one camera's engine sees: restoration goes through the shared batcher."""

    def __init__(self, batcher: CrossCameraBatcher, camera: str) -> None:
        self._batcher = batcher
        self.camera = camera
        self.name = batcher.dehazer.name
        self.device = batcher.dehazer.device

    @property
    def uses_guidance(self) -> bool:
        return self._batcher.dehazer.uses_guidance

    def encode_guidance(self, frames: torch.Tensor) -> Guidance:
        return self._batcher.encode_guidance(frames)

    def warm_up(self, batch: int, height: int, width: int, *, scale: float = 1.0) -> bool:
        """The engine's warm-up (CUDA graphs for the frame size): the shared batcher warms every batch size it
        may run, whatever this camera's own ``batch``."""
        return self._batcher.warm_up(height, width, scale)

    def restore(self, frames: torch.Tensor, guidance: Guidance | None, *, scale: float = 1.0) -> torch.Tensor:
        restored, done = self._batcher.submit(self.camera, frames, guidance, scale).result()
        done.wait()  # the camera's stream waits for the batch before reading its frames
        if restored.device.type == "cuda":
            restored.record_stream(torch.cuda.current_stream())
        return restored
