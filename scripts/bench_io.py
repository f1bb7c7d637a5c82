#!/usr/bin/env python
"""Video I/O benchmark: decode -> RGB -> encode through stream/ vs ``ffmpeg -c:v libx264 -preset P``.

Usage: python scripts/bench_io.py [--frames 300] [--preset veryfast] [--source clip.mp4] [--runs 1]
Prints both wall times and the ratio (target <= 1.3x).
"""

from __future__ import annotations

import argparse
import json

from pipelines.bench.io import IoBenchConfig, run_io_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=IoBenchConfig.frames)
    parser.add_argument("--preset", default=IoBenchConfig.preset)
    parser.add_argument("--container", default=IoBenchConfig.container, help="output extension for both")
    parser.add_argument("--source", default=None, help="clip to use instead of a generated 720p one")
    parser.add_argument("--runs", type=int, default=1, help="repeat and print each run")
    args = parser.parse_args()
    config = IoBenchConfig(frames=args.frames, preset=args.preset, container=args.container, source=args.source)
    for _ in range(args.runs):
        result = run_io_benchmark(config)
        print(
            f"{result['frames']} frames, preset {args.preset}: ffmpeg {result['ffmpeg_s']:.2f} s "
            f"({result['ffmpeg_fps']} fps), stream/ {result['stream_s']:.2f} s ({result['stream_fps']} fps), "
            f"ratio {result['ratio']:.2f}x (target <= {result['target_ratio']}x); "
            f"PyAV YUV-only {result['pyav_yuv_s']:.2f} s, ratio {result['ratio_vs_pyav_yuv']:.2f}x"
        )
        print(json.dumps({k: v for k, v in result.items() if k != "config"}))


if __name__ == "__main__":
    main()
