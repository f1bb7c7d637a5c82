"""Hardware video decoding: NVDEC through PyAV's hwaccel, chosen per run, probed once, CPU fallback.

PyAV decodes on the GPU and copies each frame back to system memory (NV12), so everything after the
decoder is unchanged; codecs the GPU cannot decode fall back to software per stream
(``allow_software_fallback``). Without a usable CUDA device (no driver, no GPU, an FFmpeg build without
CUDA) the run decodes on the CPU and says why once: ``auto`` quietly (info), an explicit ``cuda`` with a
warning. Hardware decoding never turns a run that can decode into a failure.

Whether a stream really decodes on the GPU is only known once it has decoded a frame (the codec may have no
NVDEC profile, and PyAV then falls back silently): :func:`decoded_on_gpu` tells, and the input logs
"decoding with NVDEC" only then. ``av.codec.hwaccel`` needs PyAV >= 14 and is imported when a probe runs.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import av

if TYPE_CHECKING:
    from av.codec.hwaccel import HWAccel

logger = logging.getLogger(__name__)

HWDEC_CHOICES = ("none", "auto", "cuda")
CUDA = "cuda"
PROBE_CODEC = "h264"  # any decoder NVDEC has; creating its context creates the CUDA device
# What frames decoded by NVDEC look like once PyAV has copied them to system memory (the surface's software
# format); software decoders of the same streams give planar formats (yuv420p, yuv420p10le, ...).
NVDEC_TRANSFER_FORMATS = frozenset({"nv12", "p010le", "p016le", "nv16", "p210le", "p216le"})


def hwdevices_available() -> list[str]:
    """Hardware device types this PyAV/FFmpeg build supports. Raises ImportError before PyAV 14."""
    from av.codec.hwaccel import hwdevices_available as available

    return list(available())


def _hwaccel(device_type: str, **options: Any) -> HWAccel:
    from av.codec.hwaccel import HWAccel

    return HWAccel(device_type=device_type, **options)


@functools.cache
def probe(device_type: str = CUDA) -> str | None:
    """None when ``device_type`` hardware decoding can start here, else why not (one line). Cached per process."""
    try:
        devices = hwdevices_available()
    except ImportError:
        return f"PyAV {av.__version__} has no hardware decoding (needs PyAV >= 14)"
    if device_type not in devices:
        return f"this FFmpeg build has no {device_type} device support"
    try:
        av.CodecContext.create(PROBE_CODEC, "r", hwaccel=_hwaccel(device_type))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        return f"no usable {device_type} device ({type(exc).__name__}: {exc})"
    return None


@functools.cache
def resolve(choice: str) -> HWAccel | None:
    """The hwaccel that inputs open with for ``--hwdec choice`` (None: software), logging once why not.

    Raises:
        ValueError: ``choice`` is not one of ``HWDEC_CHOICES``.
    """
    if choice not in HWDEC_CHOICES:
        raise ValueError(f"hwdec must be one of {', '.join(HWDEC_CHOICES)}, got {choice!r}")
    if choice == "none":
        return None
    reason = probe(CUDA)
    if reason is not None:
        (logger.warning if choice == CUDA else logger.info)("hardware decoding off: %s; decoding on the CPU", reason)
        return None
    logger.debug("NVDEC usable: inputs open with PyAV hwaccel %s (software fallback per stream)", CUDA)
    return _hwaccel(CUDA, allow_software_fallback=True)


def decoded_on_gpu(codec_context: Any, frame: Any) -> bool:
    """True when ``frame`` (decoded by ``codec_context``) came from the hardware decoder, not a silent fallback.

    Args:
        codec_context: the stream's ``av.VideoCodecContext``.
        frame: an ``av.VideoFrame`` it decoded (PyAV has copied it to system memory).
    """
    return bool(getattr(codec_context, "is_hwaccel", False)) and frame.format.name in NVDEC_TRANSFER_FORMATS
