"""One connection to a source through PyAV: open, describe, demux + decode to RGB.

``open_connection`` is the default opener of ``FrameSource``; tests inject their own opener with the
same shape (``(spec, options) -> Connection``). Everything here runs in the source's reader thread.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol

import av
import numpy as np

from stream.convert import frame_to_rgb, matrix_of, range_of
from stream.errors import DecodeError, SourceOpenError, SourceTimeout
from stream.hwdec import decoded_on_gpu
from stream.hwdec import resolve as resolve_hwdec
from stream.records import AudioInfo, VideoInfo
from stream.uri import SourceSpec, redact

if TYPE_CHECKING:
    from stream.source import SourceOptions

logger = logging.getLogger(__name__)

US_PER_S = 1_000_000  # FFmpeg's socket timeouts are in microseconds
MAX_CONSECUTIVE_CORRUPT = 200  # corrupt packets in a row before a file is declared undecodable
_NETWORK_KINDS = frozenset({"rtsp", "rtmp", "srt", "http", "hls"})
_UNAUTHORIZED = ("401", "unauthorized", "authorization")
TEMPLATE_FORMATS = ("nut", "matroska")  # in-memory holders of detached audio codec parameters
TIMEOUT_FRACTION = 0.9  # an open that failed after this share of its deadline is reported as a timeout


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (TimeoutError, av.error.ExitError))


@dataclass(frozen=True)
class RawFrame:
    """A decoded frame before re-basing: per-connection PTS."""

    rgb: np.ndarray  # (H, W, 3) uint8
    pts: int | None
    time_base: Fraction
    packets: tuple[Any, ...] = field(default=(), repr=False)  # audio av.Packets since the previous frame


class Connection(Protocol):
    """What ``FrameSource`` needs from an opened source."""

    info: VideoInfo
    trailing_audio: tuple[Any, ...]  # audio demuxed after the last frame (valid once frames() ends)
    corrupt_packets: int

    def frames(self, size: tuple[int, int] | None) -> Iterator[RawFrame]:
        """Decoded frames, scaled to ``size`` (width, height) when given."""
        ...

    def close(self) -> None: ...


def _scrub(text: str, spec: SourceSpec) -> str:
    text = redact(text)
    return text.replace(spec.password, "***") if spec.password else text


def _reason(exc: BaseException, spec: SourceSpec) -> str:
    """One line describing an FFmpeg/OS error, without the URL (which may hold a password)."""
    detail = getattr(exc, "strerror", None) or (exc.args[0] if exc.args else "") or type(exc).__name__
    return _scrub(str(detail), spec)


def _classify_open_error(exc: BaseException, spec: SourceSpec) -> SourceOpenError:
    where = spec.display
    reason = _reason(exc, spec)
    if spec.kind == "file":
        if isinstance(exc, EOFError):  # a container with streams but not one packet (an aborted recording)
            return SourceOpenError(f"no video frames in {where} (the file ends before the first)")
        if isinstance(exc, av.error.InvalidDataError):
            return SourceOpenError(f"not a video file (FFmpeg cannot read it): {where}")
        return SourceOpenError(f"cannot open {where}: {reason}")
    if "protocol not found" in reason.lower():
        return SourceOpenError(f"{spec.kind} input is not supported by this FFmpeg build: {where}")
    if any(word in reason.lower() for word in _UNAUTHORIZED) or isinstance(exc, PermissionError):
        return SourceOpenError(f"authentication failed for {where} (wrong user or password?)")
    return SourceOpenError(f"cannot connect to {where}: {reason}")


def detach_template(stream: Any) -> Any:
    """A copy of an input stream's codec parameters that outlives the input container.

    Sinks stream-copy audio with ``add_stream_from_template``, which reads the template's codec
    parameters; an input stream's die with its container (closed at end of file or on reconnect). The copy
    lives in a never-written in-memory NUT container kept alive by the returned stream.
    """
    for fmt in TEMPLATE_FORMATS:
        holder = av.open(io.BytesIO(), "w", format=fmt)
        try:
            return holder.add_stream_from_template(stream)
        except ValueError:  # this muxer cannot carry the codec; try the next
            continue
    logger.debug("keeping the live input stream as template for %s", stream.codec_context.name)
    return stream


def _check_path(spec: SourceSpec) -> None:
    if spec.kind != "file":
        return
    if not os.path.exists(spec.url):
        raise SourceOpenError(f"no such file: {spec.url}")
    if os.path.isdir(spec.url):
        raise SourceOpenError(f"is a directory, not a video file: {spec.url}")


def container_options(spec: SourceSpec, options: SourceOptions, live: bool) -> dict[str, str]:
    """FFmpeg options for opening ``spec``: transport, socket timeouts, low-latency probing."""
    opts: dict[str, str] = {}
    if spec.kind == "rtsp":
        opts["rtsp_transport"] = options.rtsp_transport
        opts["timeout"] = str(int(options.read_timeout_s * US_PER_S))  # FFmpeg >= 5 name (not stimeout)
    elif spec.kind in ("rtmp", "srt", "http", "hls"):
        opts["rw_timeout"] = str(int(options.read_timeout_s * US_PER_S))
    if live and options.fast_probe:
        opts["analyzeduration"] = str(int(options.probe_duration_s * US_PER_S))
        # nobuffer cuts network latency but makes the MP4 demuxer return nothing: network only
        opts["fflags"] = "nobuffer+discardcorrupt" if spec.kind in _NETWORK_KINDS else "discardcorrupt"
    opts.update(options.container_options)
    return opts


class PyAVConnection:
    """An opened PyAV input with its first frame already decoded (so ``info`` is exact)."""

    def __init__(self, spec: SourceSpec, options: SourceOptions, live: bool) -> None:
        _check_path(spec)
        timeout = (options.open_timeout_s, options.read_timeout_s) if spec.kind in _NETWORK_KINDS else None
        fmt = "v4l2" if spec.kind == "v4l2" else None
        started = time.monotonic()
        hwaccel = resolve_hwdec(options.hwdec)
        # PyAV < 14 has no ``hwaccel`` argument; resolve() is None there
        hw_option = {} if hwaccel is None else {"hwaccel": hwaccel}
        try:
            self._container = av.open(
                spec.url, "r", format=fmt, options=container_options(spec, options, live), timeout=timeout,
                **hw_option,
            )
        except (av.error.FFmpegError, OSError) as exc:
            # FFmpeg's message repeats the URL; chain a scrubbed copy so tracebacks never show the password
            cause = ConnectionError(_scrub(str(exc), spec)) if spec.password else exc
            elapsed_s = time.monotonic() - started
            if timeout is not None and (elapsed_s >= TIMEOUT_FRACTION * options.open_timeout_s or _is_timeout(exc)):
                # FFmpeg's interrupt surfaces as assorted errors ("Invalid data", "Exit requested")
                raise SourceTimeout(
                    f"{spec.display}: open timed out after {elapsed_s:.1f} s (server accepted but never answered?)"
                ) from cause
            raise _classify_open_error(exc, spec) from cause
        self._spec = spec
        self.trailing_audio: tuple[Any, ...] = ()
        self.corrupt_packets = 0
        try:
            if not self._container.streams.video:
                kinds = sorted({s.type for s in self._container.streams})
                raise SourceOpenError(f"no video stream in {spec.display} (streams: {', '.join(kinds) or 'none'})")
            self._video = self._container.streams.video[0]
            self._video.thread_type = "AUTO"
            if options.decoder_threads:
                self._video.thread_count = options.decoder_threads
            self._audio = tuple(self._container.streams.audio)
            self._pending: list[Any] = []
            self._decoded = self._decode()
            self._first = next(self._decoded, None)
            if self._first is None:
                raise SourceOpenError(f"no decodable video frames in {spec.display}")
        except BaseException:
            self._container.close()
            raise
        self.info = self._describe(live)
        self.decodes_on_gpu = hwaccel is not None and decoded_on_gpu(self._video.codec_context, self._first)
        if self.decodes_on_gpu:
            logger.info("decoding %s with NVDEC (%s frames)", spec.display, self.info.pix_fmt)
        elif hwaccel is not None:
            logger.info("NVDEC asked for, but %s (%s) decodes on the CPU (no NVDEC profile for it: software fallback)",
                        spec.display, self.info.codec)  # fmt: skip

    def _describe(self, live: bool) -> VideoInfo:
        stream, first = self._video, self._first
        assert first is not None
        rate = stream.average_rate or stream.guessed_rate
        duration_s = None
        if not live:
            if stream.duration is not None and stream.time_base is not None:
                duration_s = float(stream.duration * stream.time_base)
            elif self._container.duration is not None:
                duration_s = self._container.duration / US_PER_S
        audio = tuple(
            AudioInfo(
                index=a.index,
                codec=a.codec_context.name,
                sample_rate=a.codec_context.sample_rate,
                channels=a.codec_context.channels,
                time_base=a.time_base,
                template=detach_template(a),
            )
            for a in self._audio
        )
        return VideoInfo(
            width=first.width,
            height=first.height,
            time_base=stream.time_base or Fraction(1, 90000),
            fps=Fraction(rate) if rate else None,
            codec=stream.codec_context.name,
            pix_fmt=first.format.name,
            color_range=range_of(first),
            color_matrix=matrix_of(first),
            rotation=int(first.rotation) % 360,
            duration_s=duration_s,
            frame_count=(stream.frames or None) if not live else None,
            is_live=live,
            audio=audio,
            uri=self._spec.display,
        )

    def _decode(self) -> Iterator[av.VideoFrame]:
        consecutive = 0
        for packet in self._container.demux(self._video, *self._audio):
            if packet.stream.type == "audio":
                if packet.size:
                    self._pending.append(packet)
                continue
            if packet.is_corrupt:  # the demuxer saw damage (e.g. MPEG-TS continuity errors): skip, as discardcorrupt
                self.corrupt_packets += 1
                logger.debug("skipping a packet flagged corrupt in %s (pts %s)", self._spec.display, packet.pts)
                continue
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as exc:
                self.corrupt_packets += 1
                consecutive += 1
                logger.debug("skipping corrupt packet in %s: %s", self._spec.display, _reason(exc, self._spec))
                if consecutive > MAX_CONSECUTIVE_CORRUPT:
                    raise DecodeError(f"{consecutive} corrupt packets in a row in {self._spec.display}") from exc
                continue
            consecutive = 0
            yield from frames

    def _take_audio(self) -> tuple[Any, ...]:
        packets, self._pending = tuple(self._pending), []
        return packets

    def frames(self, size: tuple[int, int] | None) -> Iterator[RawFrame]:
        """Yield RGB frames (first the one decoded at open), then record trailing audio."""
        tb = self._video.time_base or Fraction(1, 90000)
        if self._first is not None:
            first, self._first = self._first, None
            yield RawFrame(frame_to_rgb(first, size=_resize(first, size)), first.pts, tb, self._take_audio())
        for frame in self._decoded:
            yield RawFrame(frame_to_rgb(frame, size=_resize(frame, size)), frame.pts, tb, self._take_audio())
        self.trailing_audio = self._take_audio()

    def close(self) -> None:
        self._container.close()


def _resize(frame: av.VideoFrame, size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None or size == (frame.width, frame.height):
        return None
    return size


def open_connection(spec: SourceSpec, options: SourceOptions, live: bool) -> Connection:
    """Default opener: a PyAV connection to ``spec``.

    Raises:
        SourceOpenError: Missing file, directory, not video, unreachable, bad credentials.
    """
    return PyAVConnection(spec, options, live)
