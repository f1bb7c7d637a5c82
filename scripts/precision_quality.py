"""bf16 against fp32 on the held-out set: what bf16 autocast costs, with the fp32 reconstruction head and without.

Writes the held-out hazy/clear pairs of the model card (``scripts/train_default.py``'s ``write_val_sets``, same
seeds) into ``--val`` unless they are there, restores each hazy image with the bundle in fp32 (the reference), in
bf16 as shipped (network under bf16 autocast, the K/Bb head and the reconstruction in fp32), and, with
``--with-bf16-head``, in bf16 with the head under autocast too (the behaviour before issue 15 part 3). Prints
per image and on average: PSNR against the clear image, PSNR of each bf16 output against the fp32 output, and
the largest 8-bit difference to fp32.

    python scripts/precision_quality.py --work /tmp/precision --scale 0.5 --threads 2 --with-bf16-head
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cliphaze import model as model_module
from cliphaze.evaluate import read_rgb_image
from cliphaze.inference import ClipHazeDehazer
from cliphaze.metrics import psnr

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "cliphaze" / "weights" / "cliphaze-t.safetensors"


def _held_out_pairs(work: Path) -> list[Path]:
    """The model card's held-out pairs under ``work/val/<kind>/{hazy,clear}``, written first if missing."""
    if not any(work.glob("val/*/hazy/*.png")):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from train_default import write_val_sets  # same images, haze and seeds as the model card

        from cliphaze.train.content import load_default_content
        from cliphaze.train.synthetic import HazeConfig
        from pipelines.video_frames import read_frames

        write_val_sets(work, load_default_content(read_frames).val, HazeConfig())
    return sorted(work.glob("val/*/hazy/*.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--work", type=Path, required=True,
                        help="holds val/<kind>/{hazy,clear}/*.png (written if missing)")
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--limit", type=int, default=0, help="at most this many pairs (0 = all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--with-bf16-head", action="store_true", help="also run the head under bf16 (pre-fix)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pairs = _held_out_pairs(args.work)
    pairs = pairs[: args.limit] if args.limit else pairs
    dehazers = {p: ClipHazeDehazer.from_bundle(args.bundle, precision=p) for p in ("fp32", "bf16")}
    configs = ["fp32", "bf16"] + (["bf16 head"] if args.with_bf16_head else [])
    rows: dict[str, list[tuple[float, float, int, float]]] = {c: [] for c in configs}
    for hazy_path in pairs:
        hazy = read_rgb_image(hazy_path)
        clear = read_rgb_image(hazy_path.parent.parent / "clear" / hazy_path.name)
        frames = torch.from_numpy(hazy)[None]
        outs: dict[str, np.ndarray] = {}
        for config in configs:
            bf16_head = config == "bf16 head"
            patch = (contextlib.nullcontext() if not bf16_head else
                     _patched(model_module, "_autocast_off", lambda _device: contextlib.nullcontext()))  # fmt: skip
            started = time.perf_counter()
            dehazer = dehazers["bf16" if bf16_head else config]
            with patch:
                outs[config] = dehazer.restore(frames, None, scale=args.scale)[0].numpy()
            seconds = time.perf_counter() - started
            vs_fp32 = psnr(outs[config], outs["fp32"]) if config != "fp32" else float("inf")
            worst = int(np.abs(outs[config].astype(np.int16) - outs["fp32"].astype(np.int16)).max())
            rows[config].append((psnr(outs[config], clear), vs_fp32, worst, seconds))
        print(f"{hazy_path.parent.parent.name}/{hazy_path.name} {hazy.shape[1]}x{hazy.shape[0]}: "
              + "; ".join(f"{c} {rows[c][-1][0]:.2f} dB (vs fp32 {rows[c][-1][1]:.2f} dB, max diff {rows[c][-1][2]})"
                          for c in configs), flush=True)  # fmt: skip
    print(f"\n{len(pairs)} held-out pairs, scale {args.scale:g}, bundle {args.bundle.name}, {args.threads} threads")
    for config in configs:
        values = np.array(rows[config], dtype=np.float64)
        print(f"{config:9s}: PSNR vs clear {values[:, 0].mean():6.2f} dB, vs fp32 output "
              f"{values[:, 1].mean():6.2f} dB (min {values[:, 1].min():.2f}), "
              f"max 8-bit diff {int(values[:, 2].max())}, {1e3 * values[:, 3].mean():.0f} ms/image")


@contextlib.contextmanager
def _patched(module: object, name: str, value: object):  # type: ignore[no-untyped-def]
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


if __name__ == "__main__":
    main()
