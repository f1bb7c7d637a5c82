"""Hardware video decoding: NVDEC through PyAV's hwaccel, chosen per run, probed once, CPU fallback.

PyAV decodes on the GPU and copies each frame back to system memory (NV12), so everything after the
decoder is unchanged; codecs the GPU cannot decode fall back to software per stream
(``allow_software_fallback``). Without a usable CUDA device (no driver, no GPU, an FFmpeg build without
CUDA) the run decodes on the CPU and says why once: ``auto`` quietly (info), an explicit ``cuda`` with a
warning. Hardware decoding never turns a run that can decode into a failure.
"""

from __future__ import annotations

import functools
import logging

import av
from av.codec.hwaccel import HWAccel, hwdevices_available

logger = logging.getLogger(__name__)

HWDEC_CHOICES = ("none", "auto", "cuda")
CUDA = "cuda"
PROBE_CODEC = "h264"  # any decoder NVDEC has; creating its context creates the CUDA device


@functools.cache
def probe(device_type: str = CUDA) -> str | None:
    """None when ``device_type`` hardware decoding can start here, else why not (one line). Cached per process."""
    if device_type not in hwdevices_available():
        return f"this FFmpeg build has no {device_type} device support"
    try:
        av.CodecContext.create(PROBE_CODEC, "r", hwaccel=HWAccel(device_type=device_type))
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
    logger.info("decoding with NVDEC (PyAV hwaccel %s, software fallback per stream)", CUDA)
    return HWAccel(device_type=CUDA, allow_software_fallback=True)
