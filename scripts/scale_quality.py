"""Quality cost of the real-time knobs on held-out pairs: ``--scale`` (guided upsampling) and bf16.

For every hazy/clear pair under ``VAL_DIR/<set>/{hazy,clear}/*.png`` it restores the hazy image with a
CLIPHaze bundle at scale 1 (fp32, the reference), at each ``--scales`` value and in bf16 at scale 1, and
prints mean PSNR against the clear image, the change against scale 1, and the mean restore time.

    python scripts/scale_quality.py --bundle runs/default/cliphaze-t.safetensors --val runs/default/val
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from cliphaze.inference import ClipHazeDehazer
from cliphaze.evaluate import read_rgb_image
from cliphaze.metrics import psnr


def _restore(dehazer, image: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    frames = torch.from_numpy(image)[None]
    started = time.perf_counter()
    out = dehazer.restore(frames, None, scale=scale)[0].numpy()
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True, help="folder of <set>/{hazy,clear}/*.png")
    parser.add_argument("--scales", default="0.5,0.25")
    parser.add_argument("--limit", type=int, default=0, help="at most this many pairs (0 = all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pairs = sorted(args.val.glob("*/hazy/*.png"))
    pairs = pairs[: args.limit] if args.limit else pairs
    configs = [("fp32", 1.0)] + [("fp32", float(s)) for s in args.scales.split(",")] + [("bf16", 1.0)]
    dehazers = {p: ClipHazeDehazer.from_bundle(args.bundle, precision=p) for p in {p for p, _ in configs}}
    scores: dict[tuple[str, float], list[tuple[float, float]]] = {c: [] for c in configs}
    for hazy_path in pairs:
        hazy = read_rgb_image(hazy_path)
        clear = read_rgb_image(hazy_path.parent.parent / "clear" / hazy_path.name)
        for precision, scale in configs:
            out, seconds = _restore(dehazers[precision], hazy, scale)
            scores[(precision, scale)].append((psnr(out, clear), seconds))
        print(f"{hazy_path.parent.parent.name}/{hazy_path.name} {hazy.shape[1]}x{hazy.shape[0]}: "
              + ", ".join(f"{p}@{s:g} {scores[(p, s)][-1][0]:.2f} dB" for p, s in configs), flush=True)
    base = np.mean([v for v, _ in scores[("fp32", 1.0)]])
    print(f"\n{len(pairs)} held-out pairs, bundle {args.bundle}")
    for precision, scale in configs:
        values = scores[(precision, scale)]
        mean = float(np.mean([v for v, _ in values]))
        print(f"{precision} scale {scale:<4g}: PSNR {mean:6.2f} dB (change vs fp32 scale 1: {mean - base:+.2f} dB), "
              f"restore {1e3 * np.mean([t for _, t in values]):.0f} ms/image")


if __name__ == "__main__":
    main()
