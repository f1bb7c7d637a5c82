"""``run``: wire the five stages, start their threads, wait, surface the first error, return stats."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from cliphaze.dehazer import Dehazer
from pipelines.config import PipelineConfig
from pipelines.cuda_streams import create_streams
from pipelines.guidance_cache import GuidanceCache
from pipelines.stages import (
    Aborted,
    Context,
    Control,
    FrameSink,
    FrameSource,
    Message,
    download_stage,
    encode_stage,
    guidance_stage,
    restore_stage,
    source_count,
    upload_stage,
)
from pipelines.stats import FrameDone, RunStats, StatsCollector
from stream.records import EndOfStream

logger = logging.getLogger(__name__)

STAGES = ("upload", "guidance", "restore", "download", "encode")  # upload reads the source's own queue
# After an abort, how long to wait for a stage stuck in I/O (e.g. a blocking live read) before leaving it.
ABORT_JOIN_S = 5.0


def run(
    source: FrameSource,
    sink: FrameSink,
    dehazer: Dehazer,
    config: PipelineConfig,
    stop_event: threading.Event | None = None,
    on_frame: Callable[[FrameDone], None] | None = None,
    on_end: Callable[[EndOfStream], None] | None = None,
) -> RunStats:
    """Dehaze every frame of ``source`` into ``sink``.

    Opening and closing source and sink stay with the caller (close the sink after ``run`` returns or
    raises: that flushes the encoder and finalizes the file).

    Args:
        source: iterable of ``Frame`` with ``info`` (``is_live``: batches do not wait for frames), optionally
            ``end`` and ``stats`` (see ``stages.FrameSource``); a live source drops frames itself.
        sink: object with ``write(frame)``; frames arrive in source order with their pts and audio.
        dehazer: any ``Dehazer``; frames are handed to it on ``dehazer.device``.
        config: engine settings.
        stop_event: set it (e.g. from a signal handler) to stop reading; frames in flight drain.
        on_frame: called after each frame is written, from the encode thread.
        on_end: called with the final ``EndOfStream`` after the last frame is written.

    Returns:
        The run's statistics.

    Raises:
        The first exception raised by any stage (source, dehazer, sink or callbacks), unchanged.
    """
    control = Control(stop=stop_event or threading.Event(), poll_s=config.poll_s)
    streams = create_streams(dehazer.device)
    use_cache = dehazer.uses_guidance or config.want_density
    queues: list[queue.Queue[Message]] = [queue.Queue(maxsize=config.queue_depth) for _ in STAGES[1:]]
    stats = StatsCollector()
    ctx = Context(
        config=config,
        control=control,
        stats=stats,
        streams=streams,
        dehazer=dehazer,
        cache=GuidanceCache(dehazer, config.guidance, streams) if use_cache else None,
        source=source,
        queues=queues,
        is_live=bool(source.info.is_live),
        frame_size=(source.info.height, source.info.width) if source.info.width and source.info.height else None,
    )
    q = queues
    targets: list[tuple[str, Callable[[], None]]] = [
        ("upload", lambda: upload_stage(ctx, source, q[0])),
        ("guidance", lambda: guidance_stage(ctx, q[0], q[1])),
        ("restore", lambda: restore_stage(ctx, q[1], q[2])),
        ("download", lambda: download_stage(ctx, q[2], q[3])),
        ("encode", lambda: encode_stage(ctx, q[3], sink, on_frame, on_end)),
    ]

    def guarded(stage: str, target: Callable[[], None]) -> Callable[[], None]:
        def body() -> None:
            try:
                target()
            except Aborted:
                return
            except BaseException as exc:  # worker-thread boundary: hand the error to the runner
                logger.debug("stage %s failed: %s", stage, exc, exc_info=True)
                control.fail(stage, exc)

        return body

    threads = [threading.Thread(target=guarded(n, t), name=f"cliphaze-{n}", daemon=True) for n, t in targets]
    logger.debug("run: dehazer=%s device=%s batch=%d cache=%s", dehazer.name, dehazer.device, config.batch, use_cache)
    stats.start()
    for thread in threads:
        thread.start()
    aborted_at: float | None = None
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=config.poll_s)
            if control.abort.is_set():
                aborted_at = aborted_at or time.perf_counter()
                if time.perf_counter() - aborted_at > ABORT_JOIN_S:
                    logger.warning("stage thread %s did not stop after an error; leaving it", thread.name)
                    break
    if control.errors:
        stage, error = control.errors[0]
        logger.debug("run failed in stage %s", stage)
        raise error
    cache = ctx.cache
    stats.dropped(source_count(source, "drops") or 0)  # live sources drop their oldest frames themselves
    return stats.summary(
        reconnects=source_count(source, "reconnects") or 0,
        hits=cache.counters.hits if cache else 0,
        misses=cache.counters.misses if cache else 0,
        invalidations=cache.counters.invalidations if cache else 0,
        stopped=ctx.stopped_early,
        corrupt_packets=source_count(source, "corrupt_packets") or 0,
    )
