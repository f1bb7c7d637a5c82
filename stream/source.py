"""FrameSource: frames from files, live cameras and pipes, never hanging, reconnecting live sources.

A supervisor thread runs one reader thread per connection. The reader opens (through an injectable
opener), decodes to RGB and pushes ``Frame`` records into a bounded queue: lossless with backpressure
for files, keep-latest (drop oldest, counted) for live sources. The supervisor enforces
application-level deadlines on open and on every read (FFmpeg's own timeouts have failed users, PyAV
#584/#1155): a reader that overruns is abandoned (state ``stalled``), never waited on, and a live source
reconnects with jittered exponential backoff. PTS are re-based so output PTS stay monotonic.

Example:
    with open_source("rtsp://cam/stream") as src:
        for frame in src:
            ...
        print(src.end, src.stats)
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from stream.errors import SourceLost, SourceOpenError, SourceTimeout, StreamError
from stream.frame_queue import FrameQueue
from stream.pyav_input import Connection, RawFrame, open_connection
from stream.reconnect import PtsRebaser, ReconnectPolicy
from stream.records import EndOfStream, Frame, VideoInfo
from stream.uri import SourceSpec, parse_source

logger = logging.getLogger(__name__)

SUPERVISOR_POLL_S = 0.02  # how often the supervisor checks its reader's deadlines
CONSUMER_POLL_S = 1.0  # how often a waiting consumer checks that the supervisor is still alive
CLOSE_JOIN_S = 2.0  # how long close() waits for threads before leaving them (daemon) behind
OPEN_GRACE_S = 1.0  # open_source waits this much longer than open_timeout_s for the supervisor's verdict
# a live frame's PTS more than this many read deadlines after the previous one is a camera clock jump: frames
# of one connection arrive at most read_timeout_s apart (a quieter connection is abandoned), the factor is slack
CLOCK_JUMP_READ_DEADLINES = 2

Opener = Callable[[SourceSpec, "SourceOptions", bool], Connection]


@dataclass(frozen=True)
class SourceOptions:
    """How a source is read."""

    queue_size: int = 8  # frames buffered between the decoder thread and the consumer (files)
    live_queue_size: int = 2  # frames kept for a live source; older ones are dropped and counted
    live: bool | None = None  # None = decide by kind (rtsp/rtmp/srt/v4l2 live; files, pipes, http not)
    open_timeout_s: float = 10.0  # deadline to open and decode the first frame
    read_timeout_s: float = 5.0  # deadline between frames before a live source counts as stalled
    rtsp_transport: str = "tcp"  # "tcp" | "udp"
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)  # live sources only
    wait_for_source: bool = False  # keep retrying a live source that cannot be opened at start
    output_size: tuple[int, int] | None = None  # live: (width, height) of every frame; None = first frame's
    container_options: Mapping[str, str] = field(default_factory=dict)  # passed to FFmpeg as-is
    fast_probe: bool = True  # live: short stream analysis so (re)connects take ~0.1 s, not ~2 s
    probe_duration_s: float = 0.5  # live: FFmpeg analyzeduration when fast_probe
    decoder_threads: int = 0  # 0 = FFmpeg's choice
    hwdec: str = "none"  # "none" | "auto" | "cuda": NVDEC through PyAV's hwaccel (stream.hwdec), CPU fallback
    source_id: str = ""  # copied into every Frame

    def __post_init__(self) -> None:
        if self.rtsp_transport not in ("tcp", "udp"):
            raise ValueError(f"rtsp_transport must be 'tcp' or 'udp', got {self.rtsp_transport!r}")
        if self.open_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        from stream.hwdec import HWDEC_CHOICES

        if self.hwdec not in HWDEC_CHOICES:
            raise ValueError(f"hwdec must be one of {', '.join(HWDEC_CHOICES)}, got {self.hwdec!r}")


@dataclass(frozen=True)
class SourceStats:
    """Counters of a source (a snapshot)."""

    state: str  # starting | running | retrying | stalled | ended
    frames: int  # frames handed to the consumer
    decoded: int  # frames decoded (includes dropped ones)
    drops: int  # frames dropped by keep-latest (live only)
    reconnects: int  # reconnect attempts
    stalls: int  # connections abandoned because they went silent past a deadline
    corrupt_packets: int  # undecodable packets skipped
    last_reason: str  # why the last connection ended / failed
    queue_depth: int  # items waiting for the consumer


@dataclass(frozen=True)
class _End:
    """Terminal queue item: end of stream, optionally with the error to raise."""

    eos: EndOfStream
    error: StreamError | None = None


class FrameSource:
    """Iterator of ``Frame`` from one source. Use ``open_source`` to create one."""

    def __init__(
        self,
        spec: SourceSpec,
        options: SourceOptions | None = None,
        *,
        opener: Opener = open_connection,
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self.options = options or SourceOptions()
        self.live = self.spec.is_live if self.options.live is None else self.options.live
        self._opener = opener
        self._rng = rng or random.Random()
        size = self.options.live_queue_size if self.live else self.options.queue_size
        self._queue = FrameQueue(size, drop_oldest=self.live)
        self._alive = threading.Event()
        self._alive.set()
        self._stopping = threading.Event()  # set by close(); backoff waits on it
        self._lock = threading.Lock()
        self._info_ready = threading.Event()
        self._open_error: StreamError | None = None
        self.info: VideoInfo | None = None
        self.end: EndOfStream | None = None
        self._state = "starting"
        self._reason = ""
        self._frames = 0
        self._decoded = 0
        self._reconnects = 0
        self._stalls = 0
        self._corrupt = 0
        self._corrupt_before = 0
        self._gen = 0  # id of the reader allowed to push; bumped to abandon a reader
        self._heartbeat = time.monotonic()
        self._connected = False  # current reader has opened
        self._rebaser: PtsRebaser | None = None
        self._jump_logged_gen = 0  # connection whose first clock jump was logged (later ones go to debug)
        self._size: tuple[int, int] | None = self.options.output_size
        self._pending_audio: tuple[Any, ...] = ()
        # log lines name the stream by its redacted URL, and by its source_id (a camera name) when it has one
        self._label = f"{spec.display} [{self.options.source_id}]" if self.options.source_id else spec.display
        self._supervisor = threading.Thread(target=self._supervise, name=f"source-{spec.kind}", daemon=True)

    # --- consumer side -------------------------------------------------------------------------------

    def start(self) -> FrameSource:
        """Start reading; wait until the source is open (or fails within the open deadline).

        Raises:
            SourceOpenError: The source cannot be opened (unless ``wait_for_source``).
        """
        self._supervisor.start()
        while not self._info_ready.wait(self.options.open_timeout_s + OPEN_GRACE_S):
            if not self.options.wait_for_source:
                self.close()
                raise SourceOpenError(f"{self.spec.display} did not open within {self.options.open_timeout_s:g} s")
        if self._stopping.is_set() and self.info is None:
            raise SourceOpenError(f"{self.spec.display} was closed before it opened")
        if self._open_error is not None:
            self.close()
            raise self._open_error
        return self

    @property
    def stats(self) -> SourceStats:
        # The queue's counters first, under the queue's own lock and not ours: the reader holds the queue's
        # lock while it waits in ``put`` and beats our heartbeat (ours inside it); taking them the other way
        # round deadlocked a reader against the engine's stats reads.
        depth, drops = len(self._queue), self._queue.drops
        with self._lock:
            return SourceStats(
                state=self._state,
                frames=self._frames,
                decoded=self._decoded,
                drops=drops,
                reconnects=self._reconnects,
                stalls=self._stalls,
                corrupt_packets=self._corrupt,
                last_reason=self._reason,
                queue_depth=depth,
            )

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        if self.end is not None:
            raise StopIteration
        item = self._queue.get(CONSUMER_POLL_S)
        while item is None:  # only a dead supervisor (a bug) could leave us waiting forever
            if not self._supervisor.is_alive():
                item = self._queue.get(0) or _End(
                    EndOfStream(self.options.source_id, (), "error"), StreamError("source worker stopped")
                )
            else:
                item = self._queue.get(CONSUMER_POLL_S)
        if isinstance(item, _End):
            self.end = item.eos
            if item.error is not None:
                raise item.error
            raise StopIteration
        with self._lock:
            self._frames += 1
        return item

    def close(self) -> None:
        """Stop reading; threads stuck inside FFmpeg are left behind as daemons, never waited on forever."""
        self._alive.clear()
        self._stopping.set()
        self._info_ready.set()  # releases a start() still waiting for the source
        with self._lock:
            self._gen += 1
        self._queue.clear()
        if self._supervisor.is_alive() and threading.current_thread() is not self._supervisor:
            self._supervisor.join(CLOSE_JOIN_S)
        if self.end is None:
            self.end = EndOfStream(self.options.source_id, (), "stopped")
        with self._lock:
            self._state = "ended"

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- supervisor ----------------------------------------------------------------------------------

    def _set(self, **kw: Any) -> None:
        with self._lock:
            for key, value in kw.items():
                setattr(self, key, value)

    def _supervise(self) -> None:
        try:
            self._supervise_loop()
        except Exception as exc:  # noqa: BLE001 - worker-thread boundary: the consumer must hear of it
            logger.exception("source %s supervisor failed", self._label)
            self._fail(StreamError(f"{self.spec.display}: internal error ({type(exc).__name__})"))

    def _supervise_loop(self) -> None:
        attempt = 0
        ever_delivered = False
        while self._alive.is_set():
            started = time.monotonic()
            outcome, error, delivered = self._run_reader()
            ever_delivered = ever_delivered or delivered
            if not self._alive.is_set():
                return
            if outcome == "eof" and not self.live:
                self._finish("eof")
                return
            if error is not None and (not self.live or not (ever_delivered or self.options.wait_for_source)):
                self._fail(error)
                return
            healthy_s = time.monotonic() - started
            attempt = 1 if delivered and healthy_s >= self.options.reconnect.reset_after_s else attempt + 1
            if self.options.reconnect.gives_up(attempt):
                tries = attempt - 1
                self._fail(SourceLost(f"{self.spec.display} lost after {tries} reconnect attempts: {self._reason}"))
                return
            delay = self.options.reconnect.delay_s(attempt, self._rng)
            logger.warning(
                "source %s %s (%s); reconnecting in %.2f s (attempt %d)",
                self._label, outcome, self._reason, delay, attempt,
            )
            # a stall stays visible as "stalled" until the next connection delivers
            state = "stalled" if outcome == "stalled" else "retrying" if ever_delivered else "starting"
            self._set(_state=state, _reconnects=self._reconnects + 1)
            self._stopping.wait(delay)

    def _run_reader(self) -> tuple[str, StreamError | None, bool]:
        """Run one connection under deadlines. Returns (outcome, error, delivered_frames)."""
        with self._lock:
            self._gen += 1
            gen = self._gen
            self._heartbeat = time.monotonic()
            self._connected = False
        result: dict[str, Any] = {"outcome": "eof", "error": None, "delivered": False}
        reader = threading.Thread(target=self._read, args=(gen, result), name="source-reader", daemon=True)
        reader.start()
        while reader.is_alive():
            reader.join(SUPERVISOR_POLL_S)
            if not self._alive.is_set():
                return "stopped", None, bool(result["delivered"])
            with self._lock:
                connected, idle_s = self._connected, time.monotonic() - self._heartbeat
            limit = self.options.read_timeout_s if connected else self.options.open_timeout_s
            if reader.is_alive() and idle_s > limit and (self.live or not connected):
                with self._lock:
                    self._gen += 1  # abandon: the reader may be stuck inside FFmpeg
                    self._state = "stalled"
                    self._stalls += 1
                    what = "no data for" if connected else "open timed out after"
                    self._reason = f"{what} {idle_s:.1f} s"
                logger.warning("source %s stalled: %s", self._label, self._reason)
                err = None if connected else SourceTimeout(f"{self.spec.display}: {self._reason}")
                return "stalled", err, bool(result["delivered"])
        return result["outcome"], result["error"], bool(result["delivered"])

    def _beat(self) -> None:
        with self._lock:
            self._heartbeat = time.monotonic()

    def _read(self, gen: int, result: dict[str, Any]) -> None:
        """Reader thread: open, decode, push. Only pushes while ``gen`` is current."""
        try:
            conn = self._opener(self.spec, self.options, self.live)
        except StreamError as exc:
            if gen != self._gen:  # abandoned by the watchdog meanwhile: its news is stale
                return
            stalled = isinstance(exc, SourceTimeout)
            result.update(outcome="stalled" if stalled else "open failed", error=exc)
            with self._lock:
                self._reason = str(exc)
                if stalled:
                    self._state = "stalled"
                    self._stalls += 1
            if self.info is None and not (self.live and self.options.wait_for_source):
                self._open_error = exc
                self._info_ready.set()
            return
        except Exception as exc:  # noqa: BLE001 - worker-thread boundary: report, never kill the thread silently
            if gen != self._gen:
                return
            err = SourceOpenError(f"cannot open {self.spec.display}: {type(exc).__name__}")
            result.update(outcome="open failed", error=err)
            self._set(_reason=err.args[0])
            if self.info is None and not (self.live and self.options.wait_for_source):
                self._open_error = err
                self._info_ready.set()
            return
        try:
            self._pump(conn, gen, result)
        except Exception:  # noqa: BLE001 - worker-thread boundary: logged with its traceback, reported as typed
            logger.exception("source %s reader failed", self._label)
            result.update(outcome="error", error=StreamError(f"{self.spec.display}: internal error"))
        finally:
            conn.close()

    def _pump(self, conn: Connection, gen: int, result: dict[str, Any]) -> None:
        with self._lock:
            if gen != self._gen:
                return
            self._connected = True
            self._heartbeat = time.monotonic()
            self._corrupt_before = self._corrupt
        if self.info is None:
            self.info = conn.info
            if self.live and self._size is None:
                self._size = (conn.info.width, conn.info.height)
            if self._size is not None and self.live:
                self.info = dataclasses.replace(self.info, width=self._size[0], height=self._size[1])
            max_gap_s = CLOCK_JUMP_READ_DEADLINES * self.options.read_timeout_s
            self._rebaser = PtsRebaser(rebase=self.live, fps=conn.info.fps, max_gap_s=max_gap_s)
            self._info_ready.set()
        assert self._rebaser is not None
        self._rebaser.new_segment()
        self._set(_state="running")
        try:
            for raw in conn.frames(self._size if self.live else None):
                if gen != self._gen or not self._alive.is_set():
                    return
                self._push(raw, conn, gen)
                result["delivered"] = True
        except StreamError as exc:
            result.update(outcome="error", error=exc)
            self._set(_reason=str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - worker-thread boundary (FFmpeg raises many types)
            reason = f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or 'read failed'}"
            result.update(outcome="lost", error=SourceLost(f"{self.spec.display}: {reason}"))
            self._set(_reason=reason)
            return
        with self._lock:
            if gen != self._gen:
                return
            self._corrupt = self._corrupt_before + conn.corrupt_packets
            self._reason = "end of stream"
        self._pending_audio += self._shift_audio(conn.trailing_audio)
        if not self.live:
            result["outcome"] = "eof"
        else:
            result.update(outcome="ended", error=None)

    def _shift_audio(self, packets: tuple[Any, ...]) -> tuple[Any, ...]:
        """Move live audio packets by the video's re-basing offset (files are untouched)."""
        if not self.live or not packets or self._rebaser is None:
            return packets
        offset_s = self._rebaser.offset_s()
        for packet in packets:
            shift = round(offset_s / packet.time_base)
            if packet.pts is not None:
                packet.pts += shift
            if packet.dts is not None:
                packet.dts += shift
        return packets

    def _push(self, raw: RawFrame, conn: Connection, gen: int) -> None:
        assert self._rebaser is not None
        jumps = self._rebaser.clock_jumps
        pts = self._rebaser(raw.pts, raw.time_base)
        if self._rebaser.clock_jumps != jumps:
            self._log_clock_jump(raw.pts, gen, self._rebaser.clock_jumps)
        packets = self._queue.take_orphans() + self._pending_audio + self._shift_audio(raw.packets)
        self._pending_audio = ()
        with self._lock:
            index = self._decoded
            self._decoded += 1
            self._heartbeat = time.monotonic()
            self._corrupt = self._corrupt_before + conn.corrupt_packets
        frame = Frame(
            data=raw.rgb,
            pts=pts,
            time_base=self._rebaser.time_base or raw.time_base,
            index=index,
            source_id=self.options.source_id,
            packets=packets,
        )
        self._queue.put(frame, alive=self._alive, heartbeat=self._beat)

    def _log_clock_jump(self, raw_pts: int | None, gen: int, jumps: int) -> None:
        """Warn at a connection's first clock jump; later ones (a camera stuck on one PTS) go to debug."""
        level = logging.WARNING if self._jump_logged_gen != gen else logging.DEBUG
        self._jump_logged_gen = gen
        what = "source %s: the camera's clock jumped (frame pts %s); output PTS continue one frame on (%d jumps)"
        logger.log(level, what, self._label, raw_pts, jumps)

    def _finish(self, reason: str) -> None:
        packets = self._queue.take_orphans() + self._pending_audio
        self._set(_state="ended")
        self._queue.put_end(_End(EndOfStream(self.options.source_id, packets, reason)))

    def _fail(self, error: StreamError) -> None:
        if self.info is None:  # open failure: raised to the caller of open_source, not logged twice
            logger.debug("source %s failed to open: %s", self._label, error)
        else:
            logger.error("source %s failed: %s", self._label, error)
        if self.info is None:
            self._open_error = error
            self._info_ready.set()
        packets = self._queue.take_orphans() + self._pending_audio
        self._set(_state="ended", _reason=str(error))
        self._queue.put_end(_End(EndOfStream(self.options.source_id, packets, "error"), error))


def open_source(
    uri_or_spec: str | SourceSpec,
    options: SourceOptions | None = None,
    *,
    opener: Opener = open_connection,
) -> FrameSource:
    """Open a source and start decoding in the background.

    Args:
        uri_or_spec: Path, URL, ``/dev/videoN``, ``-`` or a parsed ``SourceSpec``.
        options: Reading options; defaults suit files and cameras.
        opener: Connection factory (tests inject fakes).

    Returns:
        A started ``FrameSource`` whose ``info`` is set.

    Raises:
        BadUriError: Unparseable source string.
        SourceOpenError: Cannot be opened within ``options.open_timeout_s``.
    """
    spec = uri_or_spec if isinstance(uri_or_spec, SourceSpec) else parse_source(uri_or_spec)
    return FrameSource(spec, options, opener=opener).start()


__all__ = ["FrameSource", "SourceOptions", "SourceStats", "ReconnectPolicy", "open_source"]
