"""The five stage workers and the messages between them.

(source) -> upload -> guidance -> restore -> download -> encode. The source decodes on its own reader
thread into its own bounded queue (``stream.frame_queue.FrameQueue``: lossless for files, drop-oldest
with audio carry-over for live sources), and the upload stage takes frames straight from it. Each later
stage is one thread reading one bounded queue and writing the next, so frames leave in the order they
arrived. ``EndOfStream`` flows through every queue; a stage forwards it and returns, which drains the
pipeline. ``Control`` carries the caller's stop request (graceful: upload stops reading, the rest drains)
and the abort flag (the first error anywhere stops every stage at once).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from cliphaze.dehazer import Dehazer, SupportsWarmUp
from cliphaze.guidance_types import Guidance
from pipelines.config import PipelineConfig
from pipelines.cuda_streams import Marker, Streams, Timer
from pipelines.guidance_cache import GuidanceCache, densities_to_host
from pipelines.stats import FrameDone, StatsCollector
from stream.records import EndOfStream, Frame, VideoInfo

logger = logging.getLogger(__name__)

# Live batching: how often the upload stage looks for the next frame while a partial batch waits.
BATCH_POLL_S = 0.0005


class FrameSource(Protocol):
    """What the engine reads: ``stream.source.open_source`` returns one; tests use fakes.

    Optional: ``end`` (the ``EndOfStream`` with trailing audio) and ``stats`` with ``queue_depth`` (frames
    decoded, not yet taken: lets a live batch stop waiting), ``drops``, ``reconnects``, ``corrupt_packets``.
    A live source drops its oldest frames itself when the engine falls behind (``stream.frame_queue``).
    """

    info: VideoInfo

    def __iter__(self) -> Iterator[Frame]: ...


def source_count(source: FrameSource, name: str) -> int | None:
    """A counter of the source's ``stats`` (``queue_depth``, ``drops``, ...), None when it keeps none."""
    value = getattr(getattr(source, "stats", None), name, None)
    return None if value is None else int(value)


class FrameSink(Protocol):
    """What the engine writes to: ``stream.sink.open_sink`` returns one; tests use a list collector."""

    def write(self, frame: Frame) -> None: ...


class Aborted(Exception):
    """Raised inside a stage when another stage failed; never leaves the runner."""


@dataclass
class FrameItem:
    """A decoded frame and the moment the engine took it from the source (perf_counter seconds)."""

    frame: Frame
    entered_s: float


@dataclass
class BatchItem:
    """Frames travelling together from upload to download."""

    items: list[FrameItem]
    frames: torch.Tensor  # (N, H, W, 3) uint8 on the device
    uploaded: Marker  # the host-to-device copy is done
    guidance: Guidance | None = None  # for restore (batch N or 1)
    guidance_ready: Marker | None = None  # restoration waits for this (fresh guidance only)
    density: list[torch.Tensor] | None = None  # mean haze density per frame in [0, 1], 0-d device tensors
    restored: torch.Tensor | None = None  # (N, H, W', 3) uint8 on the device
    restored_ready: Marker | None = None
    restore_timer: Timer | None = None  # the restore's busy time (GPU time on CUDA), read after the download


@dataclass
class OutBatch:
    """Finished frames on the host, in order."""

    frames: list[Frame]
    entered_s: list[float]
    density: list[float] | None


Message = FrameItem | BatchItem | OutBatch | EndOfStream


@dataclass
class Control:
    """Shared run state: stop request, abort flag, first error, queue helpers that honour both."""

    stop: threading.Event
    poll_s: float
    abort: threading.Event = field(default_factory=threading.Event)
    errors: list[tuple[str, BaseException]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, stage: str, error: BaseException) -> None:
        with self.lock:
            self.errors.append((stage, error))
        self.abort.set()

    def put(self, q: queue.Queue[Message], item: Message) -> None:
        while True:
            if self.abort.is_set():
                raise Aborted
            try:
                q.put(item, timeout=self.poll_s)
                return
            except queue.Full:
                continue

    def get(self, q: queue.Queue[Message]) -> Message:
        """Next message (waits; raises ``Aborted`` once another stage failed)."""
        while True:
            if self.abort.is_set():
                raise Aborted
            try:
                return q.get(timeout=self.poll_s)
            except queue.Empty:
                continue


@dataclass
class Context:
    """Everything the stages share for one run."""

    config: PipelineConfig
    control: Control
    stats: StatsCollector
    streams: Streams
    dehazer: Dehazer
    cache: GuidanceCache | None  # None: guidance is neither used nor logged
    source: FrameSource  # read by the upload stage; its queue depth and drops go into the progress events
    queues: list[queue.Queue[Message]]  # the four inter-stage queues, upstream first
    is_live: bool
    stopped_early: bool = False
    frame_size: tuple[int, int] | None = None  # (height, width) the source announced: restore warms up for it

    def timed(self, stage: str, started_s: float) -> None:
        self.stats.busy(stage, time.perf_counter() - started_s)


def _frame_waiting(source: FrameSource, wait_s: float) -> bool:
    """Live batching: True once the source has a frame ready (within ``wait_s``); plain iterables always do."""
    deadline = time.perf_counter() + wait_s
    while True:
        waiting = source_count(source, "queue_depth")
        if waiting is None or waiting > 0:
            return True
        if time.perf_counter() >= deadline:
            return False
        time.sleep(BATCH_POLL_S)


def upload_stage(ctx: Context, source: FrameSource, out: queue.Queue[Message]) -> None:
    """Take frames from the source until end of stream, a stop request or a frame/duration limit; group
    them into batches of equal size and copy them to the device."""
    cfg = ctx.config
    frames = iter(source)
    pending: list[FrameItem] = []
    first_time_s: float | None = None
    count = 0
    end: EndOfStream | None = None

    def flush() -> None:
        started = time.perf_counter()
        batch, marker = ctx.streams.upload([it.frame.data for it in pending])
        ctx.timed("upload", started)
        ctx.control.put(out, BatchItem(items=list(pending), frames=batch, uploaded=marker))
        pending.clear()

    while True:
        if pending and ctx.is_live and not _frame_waiting(source, cfg.batch_wait_s):
            flush()  # live: the batch did not fill in time
        try:
            frame = next(frames)
        except StopIteration:
            break
        if ctx.control.abort.is_set():
            raise Aborted
        if frame.time_s is not None:
            first_time_s = frame.time_s if first_time_s is None else first_time_s
            if cfg.max_duration_s is not None and frame.time_s - first_time_s >= cfg.max_duration_s:
                end = EndOfStream(source_id=frame.source_id, reason="stopped")
                break
        if pending and pending[0].frame.data.shape != frame.data.shape:
            flush()  # a resolution change starts a new batch
        pending.append(FrameItem(frame, ctx.stats.frame_in()))
        count += 1
        if len(pending) >= cfg.batch:
            flush()
        if ctx.control.stop.is_set() or (cfg.max_frames is not None and count >= cfg.max_frames):
            end = EndOfStream(source_id=frame.source_id, reason="stopped")
            break
    if pending:
        flush()
    if end is None:
        end = getattr(source, "end", None) or EndOfStream()
    else:
        ctx.stopped_early = True
        logger.info("stopped reading after %d frames", count)
    ctx.control.put(out, end)


def _relay(ctx: Context, inp: queue.Queue[Message], out: queue.Queue[Message],
           on_batch: Callable[[BatchItem], Message]) -> None:  # fmt: skip
    """The loop of the middle stages: batches go through ``on_batch``, anything else passes; EndOfStream ends it."""
    while True:
        msg = ctx.control.get(inp)
        ctx.control.put(out, on_batch(msg) if isinstance(msg, BatchItem) else msg)
        if isinstance(msg, EndOfStream):
            return


def guidance_stage(ctx: Context, inp: queue.Queue[Message], out: queue.Queue[Message]) -> None:
    """Attach cached guidance (and per-frame mean density) to each batch."""

    def attach(msg: BatchItem) -> Message:
        if ctx.cache is None:
            return msg
        started = time.perf_counter()
        with ctx.streams.guidance():
            msg.uploaded.wait()
            result = ctx.cache.guidance_for(msg.frames, [it.frame.data for it in msg.items])
            msg.guidance_ready = result.ready
            if ctx.dehazer.uses_guidance:
                msg.guidance = result.guidance
            msg.density = result.densities
        ctx.timed("guidance", started)
        return msg

    _relay(ctx, inp, out, attach)


def restore_stage(ctx: Context, inp: queue.Queue[Message], out: queue.Queue[Message]) -> None:
    """Run the dehazer on each batch on the compute stream (after warming it up for the source's frame size)."""
    if ctx.frame_size is not None and isinstance(ctx.dehazer, SupportsWarmUp):
        # Before the first batch arrives: decoding (and a live source's drop policy) runs meanwhile.
        started = time.perf_counter()
        with ctx.streams.compute():
            warmed = ctx.dehazer.warm_up(ctx.config.batch, *ctx.frame_size, scale=ctx.config.scale)
        if warmed:
            logger.info("restore warmed up for batch %d at %dx%d in %.2f s", ctx.config.batch, ctx.frame_size[1],
                        ctx.frame_size[0], time.perf_counter() - started)  # fmt: skip

    def restore(msg: BatchItem) -> Message:
        with ctx.streams.compute():
            msg.uploaded.wait()
            if msg.guidance_ready is not None:
                msg.guidance_ready.wait()
            msg.restore_timer = ctx.streams.timer()  # after the waits: the restore's own time
            restored = ctx.dehazer.restore(msg.frames, msg.guidance, scale=ctx.config.scale)
            if ctx.config.side_by_side:
                restored = torch.cat([msg.frames, restored], dim=2)
            msg.restored = restored
            msg.restore_timer.stop()
            msg.restored_ready = ctx.streams.record()
        return msg

    _relay(ctx, inp, out, restore)


def download_stage(ctx: Context, inp: queue.Queue[Message], out: queue.Queue[Message]) -> None:
    """Copy restored batches to the host and split them back into frames (pts and audio kept)."""

    def download(msg: BatchItem) -> Message:
        assert msg.restored is not None and msg.restored_ready is not None
        started = time.perf_counter()
        host = ctx.streams.download(msg.restored, msg.restored_ready)
        arrays: np.ndarray = host.numpy()
        frames = [dataclasses.replace(it.frame, data=arrays[i]) for i, it in enumerate(msg.items)]
        ctx.timed("download", started)
        density = densities_to_host(msg.density)  # after the download: nothing left to wait for
        if msg.restore_timer is not None:
            ctx.stats.busy("restore", msg.restore_timer.seconds())  # its end was reached before the download
        return OutBatch(frames=frames, entered_s=[it.entered_s for it in msg.items], density=density)

    _relay(ctx, inp, out, download)


def encode_stage(
    ctx: Context,
    inp: queue.Queue[Message],
    sink: FrameSink,
    on_frame: Callable[[FrameDone], None] | None,
    on_end: Callable[[EndOfStream], None] | None,
) -> None:
    """Write frames in order; hand the final EndOfStream (trailing audio) to ``on_end``."""
    while True:
        msg = ctx.control.get(inp)
        if isinstance(msg, EndOfStream):
            if on_end is not None:
                on_end(msg)
            return
        assert isinstance(msg, OutBatch)
        for i, frame in enumerate(msg.frames):
            started = time.perf_counter()
            sink.write(frame)
            ctx.timed("encode", started)
            latency_ms = ctx.stats.frame_out(msg.entered_s[i])
            if on_frame is not None:
                stats = ctx.stats
                on_frame(
                    FrameDone(
                        index=frame.index,
                        pts=frame.pts,
                        time_s=frame.time_s,
                        latency_ms=latency_ms,
                        density=None if msg.density is None else msg.density[i],
                        frames_in=stats.frames_in,
                        frames_out=stats.frames_out,
                        frames_dropped=stats.frames_dropped + (source_count(ctx.source, "drops") or 0),
                        fps=stats.fps(),
                        queue_depths=(source_count(ctx.source, "queue_depth") or 0,
                                      *(q.qsize() for q in ctx.queues)),  # fmt: skip
                    )
                )
