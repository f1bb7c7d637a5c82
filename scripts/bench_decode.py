#!/usr/bin/env python
"""Decode speed through cliphaze's source (decode + conversion to RGB), CPU against NVDEC (``--hwdec``).

Writes an H.264 clip of each size (libx264 ultrafast, GOP 50), then reads it back with ``open_source`` once per
``--hwdec`` choice and prints frames per second. Where NVDEC is unusable the ``cuda`` row says so and decodes on
the CPU (the source's own fallback), so the numbers are never mislabelled.

    python scripts/bench_decode.py --sizes 1920x1080,3840x2160 --frames 120 --hwdec none,cuda
"""

from __future__ import annotations

import argparse
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from stream import hwdec
from stream.source import SourceOptions, open_source


def make_clip(path: Path, width: int, height: int, frames: int) -> None:
    """A moving gradient with noise (so the encoder has real work), H.264 yuv420p at 25 fps."""
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, width, dtype=np.float32)[None, :, None].repeat(height, 0).repeat(3, 2)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": "50"}
        for i in range(frames):
            image = np.roll(base, 8 * i, axis=1) + rng.normal(0, 8, (height, width, 1)).astype(np.float32)
            frame = av.VideoFrame.from_ndarray(np.clip(image, 0, 255).astype(np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def decode_fps(path: Path, choice: str) -> tuple[float, int, bool]:
    """Frames per second, frames decoded, and whether NVDEC really decoded them (its frames are nv12 & co.;
    a silent software fallback gives the software decoder's planar formats)."""
    with open_source(path, SourceOptions(hwdec=choice)) as source:
        on_gpu = choice != "none" and source.info.pix_fmt in hwdec.NVDEC_TRANSFER_FORMATS
        started, count = time.perf_counter(), 0
        for _ in source:
            count += 1
    return count / (time.perf_counter() - started), count, on_gpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1920x1080,3840x2160", help="WxH list")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--hwdec", default="none,cuda", help="choices to compare (none, auto, cuda)")
    args = parser.parse_args()
    reason = hwdec.probe("cuda")
    print(f"NVDEC: {'usable' if reason is None else reason}")
    with tempfile.TemporaryDirectory(prefix="cliphaze-decode-") as tmp:
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.lower().split("x"))
            clip = Path(tmp) / f"{width}x{height}.mp4"
            make_clip(clip, width, height, args.frames)
            for choice in args.hwdec.split(","):
                fps, count, on_gpu = decode_fps(clip, choice)
                used = "nvdec" if on_gpu else "cpu"
                print(f"decode {width}x{height} hwdec={choice} ({used}): {fps:.1f} fps over {count} frames")


if __name__ == "__main__":
    main()
