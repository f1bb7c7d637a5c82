"""Video encoder settings and selection (libx264 default, HEVC, NVENC probed with a logged fallback)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from fractions import Fraction

import av

logger = logging.getLogger(__name__)

CODECS = ("libx264", "libx265", "h264_nvenc", "hevc_nvenc", "auto")
FALLBACK_CODEC = "libx264"
DEFAULT_FPS = Fraction(25)  # used for GOP length when the source states no rate
PROBE_SIZE_PX = 256  # NVENC probe frame size (some drivers reject tiny frames)
# BT.709 codes (libavutil/pixfmt.h): AVCOL_PRI_BT709, AVCOL_TRC_BT709, AVCOL_SPC_BT709, AVCOL_RANGE_MPEG
BT709 = 1
RANGE_LIMITED = 1


@dataclass(frozen=True)
class EncoderConfig:
    """How video is encoded."""

    codec: str = "libx264"  # libx264 | libx265 | h264_nvenc | hevc_nvenc | auto (NVENC if usable)
    crf: int | None = 23  # constant quality (x264/x265 crf, NVENC cq); ignored when bitrate is set
    bitrate: int | None = None  # bits/s; sets constant-ish bitrate with a matching maxrate
    preset: str = "veryfast"  # x264/x265 preset; NVENC gets p1..p7 mapped from it
    gop_s: float = 2.0  # keyframe interval, closed GOP, at most 2 s (NVR segmenting cuts on keyframes)
    low_latency: bool = False  # no B-frames + zerolatency tune (live publishing)
    # None = encoder default, except 0 for fragmented MP4: its timeline cannot start at a negative DTS,
    # so B-frames would shift every output PTS by their reorder delay (2 frames with x264 defaults)
    b_frames: int | None = None
    pix_fmt: str = "yuv420p"  # output pixel format (8-bit 4:2:0 plays everywhere)
    threads: int = 0  # encoder threads; 0 = FFmpeg's choice
    segment_time_s: float | None = None  # file sinks: cut a new file every N s (keyframe aligned)
    fragment_mp4: bool = True  # .mp4: fragmented (playable after a crash up to the last fragment)

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {self.codec!r}")
        if not 0 < self.gop_s <= 2.0:
            raise ValueError(f"gop_s must be in (0, 2], got {self.gop_s}")
        if self.segment_time_s is not None and self.segment_time_s <= 0:
            raise ValueError("segment_time_s must be positive")


@functools.lru_cache(maxsize=None)
def nvenc_usable(codec: str) -> bool:
    """Try to open ``codec`` (an NVENC encoder) on a small frame; False on any FFmpeg refusal.

    H100/A100 have no NVENC and GeForce cards cap sessions, so this is probed, not assumed.
    """
    try:
        ctx = av.CodecContext.create(codec, "w")
        ctx.width = ctx.height = PROBE_SIZE_PX
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, 25)
        ctx.open()
    except (av.error.FFmpegError, ValueError) as exc:  # unknown codec or no device
        logger.info("%s not usable here: %s", codec, exc)
        return False
    del ctx  # frees the probe session (PyNvVideoCodec leaked one per query; keep none alive)
    return True


def select_codec(requested: str) -> str:
    """The encoder to use: NVENC when asked and usable, else a logged fallback to libx264."""
    if requested == "auto":
        return "h264_nvenc" if nvenc_usable("h264_nvenc") else FALLBACK_CODEC
    if requested.endswith("_nvenc") and not nvenc_usable(requested):
        logger.warning("%s is not available on this machine; falling back to %s", requested, FALLBACK_CODEC)
        return FALLBACK_CODEC
    return requested


def _nvenc_preset(preset: str) -> str:
    fast = ("ultrafast", "superfast", "veryfast", "faster", "fast")
    return "p1" if preset in fast[:2] else "p3" if preset in fast else "p5"


def configure(
    stream: av.video.stream.VideoStream,
    codec: str,
    config: EncoderConfig,
    fps: Fraction | None,
    *,
    b_frames: int | None = None,
) -> None:
    """Apply ``config`` to a freshly added video stream (profile, GOP, rate control, colour tags).

    Args:
        stream: The output video stream, before the first frame.
        codec: Encoder name after selection.
        config: Encoder settings.
        fps: Nominal source rate (GOP length); None = 25.
        b_frames: Maximum B-frames; None = the config's choice or the encoder default.
    """
    ctx = stream.codec_context
    rate = fps or DEFAULT_FPS
    gop = max(1, int(rate * Fraction(config.gop_s).limit_denominator(1000)))
    ctx.pix_fmt = config.pix_fmt
    ctx.framerate = rate
    ctx.gop_size = gop
    ctx.thread_count = config.threads
    ctx.color_primaries = BT709
    ctx.color_trc = BT709
    ctx.colorspace = BT709
    ctx.color_range = RANGE_LIMITED
    opts: dict[str, str] = {}
    b_frames = 0 if config.low_latency else config.b_frames if config.b_frames is not None else b_frames
    if b_frames is not None:
        ctx.max_b_frames = b_frames
    if codec in ("libx264", "libx265"):
        opts["preset"] = config.preset
        if config.low_latency:
            opts["tune"] = "zerolatency"
        if codec == "libx264":
            opts["profile"] = "high"
            opts["x264-params"] = f"keyint={gop}:min-keyint={gop}:open-gop=0:scenecut=0"
        else:
            opts["x265-params"] = f"keyint={gop}:min-keyint={gop}:open-gop=0:scenecut=0:log-level=warning"
        if config.bitrate is None and config.crf is not None:
            opts["crf"] = str(config.crf)
    else:  # NVENC
        opts["preset"] = _nvenc_preset(config.preset)
        opts["forced-idr"] = "1"
        if config.low_latency:
            opts["tune"] = "ll"
        if config.bitrate is None and config.crf is not None:
            opts["rc"], opts["cq"] = "vbr", str(config.crf)
    if config.bitrate is not None:
        ctx.bit_rate = config.bitrate
        opts["maxrate"] = str(config.bitrate)
        opts["bufsize"] = str(config.bitrate * 2)
    ctx.options = opts
    ctx.flags |= int(av.codec.context.Flags.closed_gop)
