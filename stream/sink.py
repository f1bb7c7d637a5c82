"""FrameSink: encode RGB frames and mux them with passthrough audio into files, stdout or a publish URL.

Files are written under ``<target>.part`` and renamed on close (``.mp4`` fragmented, so a killed run
leaves a playable ``.part`` up to the last fragment). Output PTS are the input PTS (VFR survives);
audio packets carried by each ``Frame`` are stream-copied before that frame is encoded.

Fragmented MP4 has no edit list (its moov is written before the first sample), so each track starts at
0: when audio starts earlier than video (AAC priming, -1024 samples), FFmpeg shifts the whole file by
that amount and the first video frame is held slightly longer; A/V sync is kept. Fragmented MP4 also
gets no B-frames (a negative first DTS would shift every PTS). Use ``.mkv`` for exact timestamps.

Example:
    with open_source("in.mp4") as src, open_sink("out.mp4", src.info, audio_from=src.info) as sink:
        for frame in src:
            sink.write(frame)
        sink.write_end(src.end)
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2

from stream.convert import even_size, rgb_to_yuv420p
from stream.encoder import DEFAULT_FPS, EncoderConfig, configure, select_codec
from stream.errors import EncodeError, SinkOpenError
from stream.records import EndOfStream, Frame, VideoInfo
from stream.uri import SinkSpec, parse_sink, redact

logger = logging.getLogger(__name__)

HEVC_CODECS = ("libx265", "hevc_nvenc")
PART_SUFFIX = ".part"  # files are written under this suffix and renamed on success
MP4_FRAG_FLAGS = "frag_keyframe+empty_moov+default_base_moof"
_NO_AUDIO_FORMATS = frozenset({"yuv4mpegpipe", "rawvideo"})
_RAW_CODECS = {"yuv4mpegpipe": "wrapped_avframe", "rawvideo": "rawvideo"}
_STRFTIME = re.compile(r"%[YmdHMSjy]")  # strftime fields in a segment pattern (vs %05d numbering)
PUBLISH_TIMEOUT_S = 10.0  # socket timeout while publishing (rtsp/rtmp/srt)
DEFAULT_SEGMENT_S = 10.0  # segment length when the output name is a pattern but no segment time is given
US_PER_S = 1_000_000


@dataclass(frozen=True)
class SinkStats:
    """Counters of a sink (a snapshot)."""

    frames: int  # video frames encoded
    packets: int  # video packets muxed
    audio_packets: int  # audio packets stream-copied
    audio_dropped: int  # audio packets the container could not take
    codec: str  # encoder actually used (after NVENC fallback)


class FrameSink:
    """Encoder + muxer for one output. Use ``open_sink`` to create one."""

    def __init__(
        self,
        spec: SinkSpec,
        info: VideoInfo,
        config: EncoderConfig | None = None,
        audio_from: VideoInfo | None = None,
    ) -> None:
        self.spec = spec
        self.info = info
        self.config = config or EncoderConfig()
        self._size = (info.width, info.height)
        self._path, self._final, fmt, options = self._target()
        self._check_writable()
        try:
            self._container = av.open(self._path, "w", format=fmt, options=options)
        except (av.error.FFmpegError, OSError) as exc:
            raise SinkOpenError(f"cannot open output {spec.display}: {_reason(exc)}") from self._cause(exc)
        try:
            self._codec = self._add_video(fmt)
            self._audio_map = self._add_audio(audio_from, fmt)
            # Open the encoders and write the header now: a refused publish target or an unsupported
            # codec/container pair fails here, as SinkOpenError, not at the first (buffered) packet.
            self._container.start_encoding()
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            self._abandon()
            raise SinkOpenError(f"cannot set up output {spec.display}: {_reason(exc)}") from self._cause(exc)
        self._last_pts: int | None = None
        self._frames = self._packets = self._audio_packets = self._audio_dropped = 0
        self._warned_audio = self._warned_size = False
        self._closed = False
        logger.info("sink %s: %s %dx%d, %s", spec.display, self._codec, *self._size, fmt)

    # --- setup ---------------------------------------------------------------------------------------

    def _abandon(self) -> None:
        """Close after a failed open, keeping the original error; remove an empty ``.part``."""
        try:
            self._container.close()
        except (av.error.FFmpegError, OSError) as exc:
            logger.debug("closing a failed output: %s", _reason(exc))
        if self._final is not None and os.path.exists(self._path) and os.path.getsize(self._path) == 0:
            os.remove(self._path)

    def _cause(self, exc: BaseException) -> BaseException:
        """``exc``, or a scrubbed copy when the URL has a password (FFmpeg's message repeats the URL)."""
        if not self.spec.password:
            return exc
        return ConnectionError(redact(str(exc)).replace(self.spec.password, "***"))

    def _target(self) -> tuple[str, str | None, str, dict[str, str]]:
        """(path to open, final path to rename to or None, muxer, muxer options)."""
        spec, cfg = self.spec, self.config
        if spec.kind == "pipe":
            return spec.url, None, spec.format, {}
        if spec.kind in ("rtsp", "rtmp", "srt"):
            opts = {"rtsp_transport": "tcp"} if spec.kind == "rtsp" else {}
            if spec.kind == "srt":
                opts["timeout"] = str(int(PUBLISH_TIMEOUT_S * US_PER_S))
            return spec.url, None, spec.format, opts
        if spec.format == "hls":
            return spec.url, None, "hls", {"hls_time": str(cfg.gop_s), "hls_list_size": "0"}
        segmented = spec.kind == "segments" or cfg.segment_time_s is not None
        if segmented:
            pattern = spec.url
            if "%" not in Path(pattern).name:
                stem = Path(pattern)
                pattern = str(stem.with_name(f"{stem.stem}_%05d{stem.suffix}"))
            opts = {
                "segment_time": str(cfg.segment_time_s or DEFAULT_SEGMENT_S),
                "segment_format": spec.format,
                "reset_timestamps": "1",
            }
            if _STRFTIME.search(Path(pattern).name):
                opts["strftime"] = "1"
            inner = _flush_options(spec.format, cfg)
            opts["segment_format_options"] = ":".join(f"{key}={value}" for key, value in inner.items())
            return pattern, None, "segment", opts
        return spec.url + PART_SUFFIX, spec.url, spec.format, _flush_options(spec.format, cfg)

    def _check_writable(self) -> None:
        if self.spec.kind not in ("file", "segments"):
            return
        parent = Path(self._path).parent
        if not parent.is_dir():
            raise SinkOpenError(f"output directory does not exist: {parent}")
        if not os.access(parent, os.W_OK):
            raise SinkOpenError(f"output directory is not writable: {parent}")
        if self._final is not None and Path(self._final).is_dir():
            raise SinkOpenError(f"output is a directory: {self._final}")

    def _add_video(self, fmt: str) -> str:
        width, height = even_size(*self._size)
        if (width, height) != self._size:
            logger.warning("odd size %dx%d padded to %dx%d for 4:2:0 encoding", *self._size, width, height)
        raw = _RAW_CODECS.get(fmt)
        codec = raw or select_codec(self.config.codec)
        rate = self.info.fps or DEFAULT_FPS
        self._video = self._container.add_stream(codec, rate=rate)
        self._video.width, self._video.height = width, height
        self._video.time_base = self.info.time_base
        self._video.codec_context.time_base = self.info.time_base
        if raw:
            self._video.pix_fmt = self.config.pix_fmt
        else:
            fragmented_mp4 = self.spec.format == "mp4" and self.config.fragment_mp4
            configure(self._video, codec, self.config, self.info.fps, b_frames=0 if fragmented_mp4 else None)
            if codec in HEVC_CODECS and self.spec.format in ("mp4", "mov"):
                self._video.codec_context.codec_tag = "hvc1"  # what Apple players and browsers accept
            if self.info.rotation:
                self._video.set_display_rotation(self.info.rotation)  # frames stay unrotated, like the input
        return codec

    def _add_audio(self, audio_from: VideoInfo | None, fmt: str) -> dict[int, Any]:
        mapping: dict[int, Any] = {}
        if audio_from is None or not audio_from.audio:
            return mapping
        if fmt in _NO_AUDIO_FORMATS:
            logger.warning("%s cannot carry audio; dropping %d audio stream(s)", fmt, len(audio_from.audio))
            return mapping
        for audio in audio_from.audio:
            if audio.template is None:
                continue
            try:
                mapping[audio.index] = self._container.add_stream_from_template(audio.template)
            except ValueError as exc:
                logger.warning("dropping audio stream %d (%s): %s", audio.index, audio.codec, exc)
        return mapping

    # --- writing -------------------------------------------------------------------------------------

    @property
    def stats(self) -> SinkStats:
        return SinkStats(self._frames, self._packets, self._audio_packets, self._audio_dropped, self._codec)

    def _mux_audio(self, packets: tuple[Any, ...]) -> None:
        for packet in packets:
            out = self._audio_map.get(packet.stream_index)
            if out is None:
                self._audio_dropped += 1
                if not self._warned_audio and not self._audio_map:
                    self._warned_audio = True
                continue
            packet.stream = out
            try:
                self._container.mux(packet)
            except av.error.FFmpegError as exc:  # e.g. non-monotonic audio DTS after a camera reconnect
                self._audio_dropped += 1
                logger.debug("audio packet dropped: %s", exc)
                continue
            self._audio_packets += 1

    def _next_pts(self, frame: Frame) -> int:
        tb = self._video.codec_context.time_base
        if frame.pts is None:
            step = max(1, round(1 / ((self.info.fps or DEFAULT_FPS) * tb)))
            pts = 0 if self._last_pts is None else self._last_pts + step
        elif frame.time_base != tb:
            pts = round(frame.pts * frame.time_base / tb)
        else:
            pts = frame.pts
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1
        self._last_pts = pts
        return pts

    def write(self, frame: Frame) -> None:
        """Mux the frame's audio packets, then encode the frame.

        Raises:
            EncodeError: Encoding or muxing failed (disk full, publish target gone).
        """
        data = frame.data
        if data.shape[1::-1] != self._size:
            if not self._warned_size:
                logger.warning("frame size %s differs from output %s; scaling", data.shape[1::-1], self._size)
                self._warned_size = True
            data = cv2.resize(data, self._size, interpolation=cv2.INTER_AREA)
        video_frame = rgb_to_yuv420p(data)
        video_frame.pts = self._next_pts(frame)
        video_frame.time_base = self._video.codec_context.time_base
        try:
            self._mux_audio(frame.packets)
            packets = self._video.encode(video_frame)
            self._container.mux(packets)
        except (av.error.FFmpegError, OSError) as exc:
            raise EncodeError(f"writing {self.spec.display} failed: {_reason(exc)}") from self._cause(exc)
        self._frames += 1
        self._packets += len(packets)

    def write_end(self, end: EndOfStream | None) -> None:
        """Mux the audio packets that came after the last frame."""
        if end is not None and end.packets:
            try:
                self._mux_audio(end.packets)
            except OSError as exc:
                raise EncodeError(f"writing {self.spec.display} failed: {_reason(exc)}") from self._cause(exc)

    def close(self) -> None:
        """Flush the encoder, write the trailer, rename ``*.part``. Keeps what was written on error.

        Raises:
            EncodeError: Flushing or the trailer failed (the partial file is still renamed).
        """
        if self._closed:
            return
        self._closed = True
        error: Exception | None = None
        try:
            packets = self._video.encode(None)
            self._container.mux(packets)
            self._packets += len(packets)
        except (av.error.FFmpegError, OSError) as exc:
            error = exc
        try:
            self._container.close()
        except (av.error.FFmpegError, OSError) as exc:
            error = error or exc
        if self._final is not None and os.path.exists(self._path):
            os.replace(self._path, self._final)
        if error is not None:
            raise EncodeError(f"finishing {self.spec.display} failed: {_reason(error)}") from self._cause(error)

    def __enter__(self) -> FrameSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _flush_options(fmt: str, config: EncoderConfig) -> dict[str, str]:
    """Muxer options of a file (or of each segment) that a kill cannot empty: every packet goes to the file as
    it is muxed (no 32 KiB I/O buffer, no Matroska cluster held in memory for 5 s), MP4 is fragmented at each
    keyframe, Matroska cuts a cluster per GOP. A killed run keeps everything up to its last fragment or cluster:
    at most one GOP short."""
    opts = {"flush_packets": "1"}
    if fmt == "mp4" and config.fragment_mp4:
        opts["movflags"] = MP4_FRAG_FLAGS
    if fmt == "matroska":
        opts["cluster_time_limit"] = str(round(config.gop_s * 1000))  # ms
    return opts


def _reason(exc: BaseException) -> str:
    detail = getattr(exc, "strerror", None) or (exc.args[0] if exc.args else "") or type(exc).__name__
    return redact(str(detail))


def open_sink(
    uri_or_spec: str | SinkSpec,
    info: VideoInfo,
    config: EncoderConfig | None = None,
    audio_from: VideoInfo | None = None,
    *,
    fmt: str | None = None,
) -> FrameSink:
    """Open an output for frames described by ``info``.

    Args:
        uri_or_spec: Path (format from extension; ``%`` pattern = segments), ``-`` (stdout), publish URL.
        info: Video description (size, time base, rate) of the frames that will be written.
        config: Encoder settings.
        audio_from: Source info whose audio streams are stream-copied (the source must still be open).
        fmt: Explicit muxer for ``-`` or to override the extension (``mpegts``, ``nut``, ``y4m``...).

    Returns:
        An open ``FrameSink``.

    Raises:
        BadUriError: Unknown extension, scheme or format.
        SinkOpenError: Unwritable path, unreachable publish target, encoder unavailable.
    """
    spec = uri_or_spec if isinstance(uri_or_spec, SinkSpec) else parse_sink(uri_or_spec, fmt)
    return FrameSink(spec, info, config, audio_from)


__all__ = ["EncoderConfig", "FrameSink", "SinkStats", "open_sink"]
