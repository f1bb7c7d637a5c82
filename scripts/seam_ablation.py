#!/usr/bin/env python
"""Where the shipped model's grid seams come from: metrics.seam_excess under ablations, on held-out crops (CPU).

    python scripts/seam_ablation.py --val runs/v5/val --images 3 --crop 256x384

``--val`` is a run's held-out folder (``val/<kind>/{hazy,clear}/*.png``, written by scripts/train_default.py).
Each hazy image is centre-cropped (the network sees the crop as a whole image, so its block grid starts at the
crop's corner) and restored by:

* ``net``: the bundle as shipped (``--scale 1``); ``net@0.5``: at ``--scale 0.5`` (fields at half resolution,
  guided up-sampling);
* ``net+offset4``: the input reflect-padded by 4 px at the top and left and the output cropped back, so the
  network's 8/16/32 px blocks sit 4 px off the measured grid: seams that move away come from the block structure;
* ``net+flat-density``: the CLIP density map replaced by its mean (no coarse 7x7 density grid);
* ``net+shifted-windows``: the same weights with ``attention.shift`` on (odd blocks shift their windows by 4 px,
  DehazeFormer / Swin style) — a fix that needs no new parameters;
* ``net+2-offset-mean``: the mean of ``net`` and ``net+offset4`` (twice the compute);
* ``net+guided-fields-rN``: scale 1, the K/Bb fields passed through ``--scale``'s guided filter (radius N px,
  the hazy frame as guide) before the reconstruction;
* ``dcp`` and the ``hazy`` input for reference.

Periods 2 and 4 are printed too: a fine checkerboard of the up/down-sampling (period 2 or 4) raises the 8/16/32 px
phase 0 as well, and does not move with a 4 px offset.

Prints the mean seam excess at 8/16/32 px and PSNR per method and haze kind, and writes a JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cliphaze.evaluate import read_rgb_image
from cliphaze.metrics import SEAM_PERIODS_PX, psnr, seam_excess

OFFSET_PX = 4


def centre_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = max(0, (h - height) // 2), max(0, (w - width) // 2)
    return np.ascontiguousarray(image[top : top + height, left : left + width])


def restore(dehazer, hazy: np.ndarray, *, scale: float = 1.0, offset: int = 0, flat_density: bool = False):
    frames = torch.from_numpy(hazy)[None]
    if offset:
        padded = F.pad(frames.permute(0, 3, 1, 2).float(), (offset, 0, offset, 0), mode="reflect")
        frames = padded.round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    guidance = dehazer.encode_guidance(frames)
    if flat_density and guidance.density is not None:
        guidance = dataclasses.replace(guidance, density=guidance.density.mean(dim=(-2, -1), keepdim=True)
                                       .expand_as(guidance.density).contiguous())
    out = dehazer.restore(frames, guidance, scale=scale)[0].numpy()
    return out[offset:, offset:] if offset else out


def restore_refined(dehazer, hazy: np.ndarray, radius_px: int) -> np.ndarray:
    """``net`` at scale 1 with its K/Bb fields passed through the guided filter of ``--scale`` (guide: the hazy
    frame, radius ``radius_px``): edge-aware smoothing that keeps depth edges and removes a grid in the fields."""
    from cliphaze.inference import GuidedUpsampleConfig, guided_upsample_fields
    from cliphaze.preprocess import frames_to_model, model_to_frames

    frames = torch.from_numpy(hazy)[None]
    guidance = dehazer.encode_guidance(frames)
    x = frames_to_model(frames)
    with torch.no_grad():
        k, bb = dehazer._forward_fields(x, guidance.density, guidance.tokens)
        fields = guided_upsample_fields((x + 1.0) * 0.5, torch.cat([k, bb], dim=1).float(),
                                        GuidedUpsampleConfig(radius_factor=radius_px), 1.0)
        return model_to_frames(dehazer.net.reconstruct(x, fields[:, :1], fields[:, 1:]))[0].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--val", type=Path, required=True, help="held-out folder: <kind>/{hazy,clear}/*.png")
    parser.add_argument("--weights", type=Path, default=Path("cliphaze/weights/cliphaze-t.safetensors"))
    parser.add_argument("--images", type=int, default=3, help="images per haze kind (sorted by name)")
    parser.add_argument("--names", default=None, help="comma-separated image names instead of the first --images")
    parser.add_argument("--crop", default="256x384", help="centre crop HxW")
    parser.add_argument("--methods", default="hazy,dcp,net,net@0.5,net+offset4,net+flat-density,"
                                             "net+shifted-windows,net+2-offset-mean")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from cliphaze.baselines.dcp import DarkChannelDehazer
    from cliphaze.bundle import load_bundle
    from cliphaze.factory import create_model
    from cliphaze.inference import ClipHazeDehazer

    height, width = (int(v) for v in args.crop.split("x"))
    loaded = load_bundle(args.weights)
    net = ClipHazeDehazer.from_parts(loaded.net, loaded.encoder)
    config = loaded.net.config
    shifted_net = create_model(config.replace(attention=dataclasses.replace(config.attention, shift=True)))
    shifted_net.load_state_dict(loaded.net.state_dict())
    shifted = ClipHazeDehazer.from_parts(shifted_net.eval(), loaded.encoder)
    dcp = DarkChannelDehazer("cpu")
    methods = args.methods.split(",")
    results: dict = {}
    for kind in sorted(p.name for p in args.val.iterdir() if (p / "hazy").is_dir()):
        files = sorted((args.val / kind / "hazy").glob("*.png"))
        if args.names:
            files = [f for f in files if f.stem in args.names.split(",")]
        rows: dict[str, list] = {m: [] for m in methods}
        for path in files[: args.images if not args.names else None]:
            hazy = centre_crop(read_rgb_image(path), height, width)
            clear = centre_crop(read_rgb_image(args.val / kind / "clear" / path.name), height, width)
            outputs = {}
            for method in methods:
                start = time.perf_counter()
                if method == "hazy":
                    out = hazy
                elif method == "dcp":
                    dcp.reset()
                    out = dcp.restore(torch.from_numpy(hazy)[None], None)[0].numpy()
                elif method == "net":
                    out = restore(net, hazy)
                elif method == "net@0.5":
                    out = restore(net, hazy, scale=0.5)
                elif method == "net+offset4":
                    out = restore(net, hazy, offset=OFFSET_PX)
                elif method == "net+flat-density":
                    out = restore(net, hazy, flat_density=True)
                elif method == "net+shifted-windows":
                    out = restore(shifted, hazy)
                elif method.startswith("net+guided-fields-r"):
                    out = restore_refined(net, hazy, int(method.rsplit("r", 1)[1]))
                elif method == "net+2-offset-mean":
                    a = outputs["net"] if "net" in outputs else restore(net, hazy)
                    b = outputs["net+offset4"] if "net+offset4" in outputs else restore(net, hazy, offset=OFFSET_PX)
                    out = ((a.astype(np.float32) + b.astype(np.float32)) / 2).round().astype(np.uint8)
                else:
                    raise SystemExit(f"unknown method {method}")
                outputs[method] = out
                seams = seam_excess(out, clear, (2, 4, *SEAM_PERIODS_PX))
                ms = 1e3 * (time.perf_counter() - start)
                rows[method].append({"image": path.stem, "psnr_db": psnr(out, clear), "ms": ms,
                                     **{f"seams_{p}": seams[p] for p in seams}})
                print(f"{kind:15s} {path.stem:22s} {method:20s} PSNR {rows[method][-1]['psnr_db']:6.2f}  seams "
                      + " ".join(f"{seams[p]:+.3f}" for p in seams), flush=True)
        results[kind] = rows
    print(f"\nmean over images ({args.crop} centre crops of {args.val}):")
    periods = (2, 4, *SEAM_PERIODS_PX)
    print(f"{'kind':15s} {'method':20s} {'PSNR dB':>8s} " + " ".join(f"{'seams ' + str(p):>9s}" for p in periods))
    for kind, rows in results.items():
        for method, r in rows.items():
            if r:
                print(f"{kind:15s} {method:20s} {np.mean([x['psnr_db'] for x in r]):8.2f} "
                      + " ".join(f"{np.mean([x[f'seams_{p}'] for x in r]):+9.3f}" for p in periods))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
