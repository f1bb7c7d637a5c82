"""Click commands ``train``, ``train-prompts`` and ``eval``, registered lazily by ``cli.py``.

The paper configuration (pretrained open_clip ViT-B/32 ``laion2b_s34b_b79k`` + the official DA-CLIP
checkpoint, on RESIDE ITS or NH-HAZE) is one command for a user with a GPU and internet access::

    cliphaze train /data/RESIDE/ITS --out runs/its --variant cliphaze-s \\
        --clip ViT-B-32 --pretrained laion2b_s34b_b79k --daclip daclip_ViT-B-32.pt \\
        --steps 300000 --batch 16 --crop 256 --lr 2e-4 --rot90 --device cuda

It learns the prompts first (stage 1, CLIP frozen) unless ``--prompts`` is given, then trains the network
with CLIP frozen (stage 2), and writes ``DIR/<variant>.safetensors`` for ``cliphaze dehaze --weights``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import click

from cliphaze.config import VARIANTS

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".ts", ".webm", ".m4v")
# Synthetic hazy copies per clean image written for stage 1 in --synthetic mode.
STAGE1_HAZE_COPIES = 2


class TrainInputError(click.ClickException):
    """Unusable training/evaluation input: one line, exit code 2 (as the CLI's other bad-input errors)."""

    exit_code = 2


def _bad_input(error: Exception) -> TrainInputError:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return TrainInputError(text)


def _link_files(files: list[Path], folder: Path) -> Path:
    """A flat folder of symlinks (unique names) to ``files``, for the folder-based prompt trainer."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        target = folder / f"{i:06d}{f.suffix.lower()}"
        if not target.exists():
            os.symlink(f.resolve(), target)
    return folder


def _stage1_folders(train_pairs, clean_images, out: Path, seed: int) -> tuple[Path, Path]:
    """(hazy folder, clear folder) for stage 1: the train split's files, or synthetic haze of clean images."""
    from cliphaze.evaluate import write_rgb_image
    from cliphaze.train.data import image_to_tensor
    from cliphaze.train.synthetic import HazeConfig, synthesize_haze

    stage1 = out / "stage1"
    if train_pairs is not None:
        hazy = _link_files([p.hazy for p in train_pairs], stage1 / "hazy")
        clear = _link_files(sorted({p.clear for p in train_pairs}), stage1 / "clear")
        return hazy, clear
    import torch

    clear_dir = _link_files([path for path, _ in clean_images], stage1 / "clear")
    hazy_dir = stage1 / "hazy"
    hazy_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    for i, (_, image) in enumerate(clean_images):
        for k in range(STAGE1_HAZE_COPIES):
            out_path = hazy_dir / f"{i:06d}_{k}.png"
            if not out_path.exists():
                sample = synthesize_haze(image_to_tensor(image), generator, HazeConfig())
                write_rgb_image(out_path, (sample.hazy * 255).round().byte().permute(1, 2, 0).numpy())
    return hazy_dir, clear_dir


@click.command("train")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder: resume states, history.jsonl, prompts and the final bundle.")
@click.option("--synthetic", is_flag=True, help="DATA is a folder of clean images, hazed on the fly.")
@click.option("--variant", type=click.Choice(list(VARIANTS)), default="cliphaze-s", show_default=True)
@click.option("--clip", "clip_model", default="ViT-B-32", show_default=True, help="open_clip architecture.")
@click.option("--pretrained", default="laion2b_s34b_b79k", show_default=True,
              help="open_clip pretrained tag (downloaded), local weights file, or 'none' (random init, tests).")
@click.option("--daclip", "daclip_checkpoint", type=click.Path(exists=True, dir_okay=False),
              help="Official DA-CLIP checkpoint (daclip_ViT-B-32.pt) for the semantic tokens.")
@click.option("--prompts", "prompts_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Learned prompts (skip stage 1).")
@click.option("--prompt-steps", type=int, default=2000, show_default=True, help="Stage-1 steps.")
@click.option("--steps", type=int, default=20000, show_default=True, help="Stage-2 steps.")
@click.option("--batch", type=int, default=8, show_default=True)
@click.option("--crop", type=int, default=256, show_default=True, help="Crop side in px.")
@click.option("--rot90", is_flag=True, help="Random 90-degree rotations (indoor sets).")
@click.option("--lr", type=float, default=2e-4, show_default=True)
@click.option("--warmup", type=int, default=0, show_default=True, help="Warm-up steps.")
@click.option("--ema", "ema_decay", type=float, default=0.999, show_default=True)
@click.option("--field-loss", "field_loss_weight", type=float, default=0.0, show_default=True,
              help="With --synthetic: weight of the K/Bb supervision by the haze's transmission and airlight.")
@click.option("--global-airlight", is_flag=True,
              help="Add the per-image airlight head to the variant (our extension, docs/model-card.md).")
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=int, default=4, show_default=True, help="Data-loader processes.")
@click.option("--val-fraction", type=float, default=0.1, show_default=True, help="Held-out share of the data.")
@click.option("--val-every", type=int, default=1000, show_default=True)
@click.option("--ckpt-every", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from the newest state.")
@click.option("--time-budget-min", type=float, help="Stop (resumable) after this many minutes.")
def train(data: Path, out_dir: Path, synthetic: bool, variant: str, clip_model: str, pretrained: str,
          daclip_checkpoint: str | None, prompts_path: Path | None, prompt_steps: int, steps: int, batch: int,
          crop: int, rot90: bool, lr: float, warmup: int, ema_decay: float, field_loss_weight: float,
          global_airlight: bool, amp: str, device: str, workers: int, val_fraction: float, val_every: int,
          ckpt_every: int, seed: int, resume: bool,
          time_budget_min: float | None) -> None:
    """Train CLIPHaze on DATA: stage 1 (prompts, CLIP frozen) then stage 2 (network, CLIP frozen).

    DATA layouts (auto-detected): hazy/ + clear/ (or GT/), RESIDE names (ID_x.png <-> ID.png), NTIRE
    names (NN_hazy <-> NN_GT: O-HAZE, I-HAZE, Dense-Haze, NH-HAZE), video frame folders; or, with
    --synthetic, clean images hazed on the fly. Paper configuration (GPU + internet):

    cliphaze train /data/RESIDE/ITS --out runs/its --variant cliphaze-s --clip ViT-B-32
    --pretrained laion2b_s34b_b79k --daclip daclip_ViT-B-32.pt --steps 300000 --batch 16 --crop 256
    --lr 2e-4 --rot90 --device cuda
    """
    import torch

    from cliphaze.bundle import save_bundle
    from cliphaze.clip import ClipGuidanceError, ClipSpec, GuidanceConfig, GuidanceEncoder, PromptTrainConfig
    from cliphaze.clip import create_clip, load_prompts, save_prompts
    from cliphaze.clip import train_prompts as learn_prompts
    from cliphaze.evaluate import read_rgb_image
    from cliphaze.train.config import CheckpointConfig, OptimConfig, TrainConfig, TrainConfigError, ValidationConfig
    from cliphaze.train.data import AugmentConfig, DataError, PairedImageDataset, SyntheticHazeDataset, image_to_tensor
    from cliphaze.train.layouts import DatasetLayoutError, detect_layout, list_images, split_layout
    from cliphaze.train.loop import resolve_device, train_network
    from cliphaze.train.state import ResumeError
    from cliphaze.train.synthetic import HazeConfig, synthesize_haze

    try:
        config = TrainConfig(
            variant=variant, steps=steps, batch_size=batch,
            augment=AugmentConfig(crop_px=crop, hflip=True, rot90=rot90),
            optim=OptimConfig(lr=lr, warmup_steps=warmup), ema_decay=ema_decay, field_loss_weight=field_loss_weight,
            amp=amp, seed=seed, device=device,
            num_workers=workers, checkpoint=CheckpointConfig(out_dir=str(out_dir), every_steps=ckpt_every),
            validation=ValidationConfig(every_steps=val_every),
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        train_pairs = None
        clean: list = []
        if synthetic:
            files = list_images(data)
            if not files:
                raise DataError(f"no images in {data}")
            n_val = max(1, round(len(files) * val_fraction)) if val_fraction > 0 and len(files) > 1 else 0
            clean = [(f, read_rgb_image(f)) for f in files]
            train_clean, val_clean = clean[n_val:], clean[:n_val]
            dataset = SyntheticHazeDataset([im for _, im in train_clean], config.augment, HazeConfig(), seed=seed)
            generator = torch.Generator().manual_seed(seed + 1)
            val_pairs = []
            for _, im in val_clean:
                clear = image_to_tensor(im)
                val_pairs.append((synthesize_haze(clear, generator, HazeConfig()).hazy, clear))
            clean = train_clean
        else:
            layout = detect_layout(data)
            train_pairs, val_split = split_layout(layout, val_fraction, seed=seed)
            dataset = PairedImageDataset(train_pairs, config.augment, seed=seed)
            val_pairs = [(image_to_tensor(read_rgb_image(p.hazy)), image_to_tensor(read_rgb_image(p.clear)))
                         for p in val_split[: config.validation.max_images]]
        dev = resolve_device(device)
        weights_source = None if pretrained.lower() == "none" else pretrained
        clip_spec = ClipSpec(model_name=clip_model, pretrained=weights_source)
        guidance_config = GuidanceConfig(clip=clip_spec, daclip_checkpoint=daclip_checkpoint)
        torch.manual_seed(seed)  # random-init towers ('none') are then the same in every (resumed) call
        loaded = create_clip(clip_spec, device=dev)
        if prompts_path is None:
            prompts_path = out_dir / "prompts.safetensors"
            if not prompts_path.is_file():
                hazy_dir, clear_dir = _stage1_folders(train_pairs, clean, out_dir, seed)
                click.echo(f"stage 1: learning prompts for {clip_model} ({pretrained})", err=True)
                prompts = learn_prompts(hazy_dir, clear_dir, loaded,
                                        config=PromptTrainConfig(steps=prompt_steps, seed=seed), device=dev)
                save_prompts(prompts_path, prompts)
        if daclip_checkpoint is None:
            encoder = GuidanceEncoder(guidance_config, loaded, prompts=load_prompts(prompts_path, loaded.identity),
                                      device=dev)
        else:
            encoder = GuidanceEncoder.from_config(guidance_config, prompts=prompts_path, device=dev)
        click.echo(f"stage 2: {variant} on {len(dataset)} training items, guidance {encoder.describe()}", err=True)
        model = None
        if global_airlight:
            from cliphaze.config import get_config
            from cliphaze.factory import create_model

            torch.manual_seed(seed)
            model = create_model(get_config(variant).replace(global_airlight=True))
        result = train_network(config, dataset, val_pairs=val_pairs, guidance_fn=encoder.encode, model=model,
                               resume=resume, time_budget_s=None if time_budget_min is None else time_budget_min * 60)
    except (DatasetLayoutError, DataError, TrainConfigError, ResumeError, ClipGuidanceError, ValueError) as error:
        raise _bad_input(error) from error
    bundle = out_dir / f"{variant}.safetensors"
    provenance = {"training": json.dumps({"data": str(data), "steps": result.step, "config": config.to_dict()})}
    save_bundle(bundle, result.model, encoder, embed_towers=weights_source is None, extra_metadata=provenance)
    click.echo(f"step {result.step}/{steps}; bundle written to {bundle}")


@click.command("train-prompts")
@click.argument("hazy_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("clear_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Prompts file to write (safetensors).")
@click.option("--clip", "clip_model", default="ViT-B-32", show_default=True, help="open_clip architecture.")
@click.option("--pretrained", default="laion2b_s34b_b79k", show_default=True,
              help="open_clip pretrained tag (downloaded) or local weights file.")
@click.option("--steps", type=int, default=2000, show_default=True)
@click.option("--patch-loss-weight", type=float, default=0.0, show_default=True,
              help="Weight of the per-patch density BCE on synthetic non-homogeneous haze (spec 2.7).")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def train_prompts(hazy_dir: Path, clear_dir: Path, output: Path, clip_model: str, pretrained: str, steps: int,
                  patch_loss_weight: float, device: str, seed: int) -> None:
    """Stage 1 alone: learn the hazy/clear prompt pair for a frozen CLIP from two image folders."""
    from cliphaze.clip import ClipGuidanceError, ClipSpec, PromptTrainConfig, save_prompts
    from cliphaze.clip import train_prompts as learn_prompts
    from cliphaze.train.loop import resolve_device

    try:
        spec = ClipSpec(model_name=clip_model, pretrained=None if pretrained.lower() == "none" else pretrained)
        prompts = learn_prompts(hazy_dir, clear_dir, spec,
                                config=PromptTrainConfig(steps=steps, patch_loss_weight=patch_loss_weight, seed=seed),
                                device=resolve_device(device))
    except (ClipGuidanceError, ValueError) as error:
        raise _bad_input(error) from error
    save_prompts(output, prompts)
    click.echo(f"prompts written to {output} (accuracy {prompts.stats.get('accuracy', float('nan')):.3f})")


def _dehazers(weights: Path | None, use_dcp: bool, device: str) -> dict:
    from cliphaze.baselines.dcp import DarkChannelDehazer
    from cliphaze.inference import ClipHazeDehazer
    from pipelines.dehazers import default_weights

    dehazers = {}
    weights = weights or default_weights()
    if weights is not None:
        dehazer = ClipHazeDehazer.from_bundle(weights, device=device)
        dehazers[dehazer.name] = dehazer
    if use_dcp or not dehazers:
        dehazers["dcp"] = DarkChannelDehazer(device)
    return dehazers


@click.command("eval")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CLIPHaze bundle (default: the shipped model).")
@click.option("--dcp/--no-dcp", "use_dcp", default=True, show_default=True, help="Also score the dcp baseline.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Per-image (or frame) CSV.")
@click.option("--grid", "grid_path", type=click.Path(dir_okay=False, path_type=Path), help="Before/after grid image.")
@click.option("--max-images", type=int, help="Evaluate at most this many pairs.")
@click.option("--every", type=int, default=10, show_default=True, help="Video mode: score every N-th frame.")
@click.option("--max-frames", type=int, default=30, show_default=True, help="Video mode: frames scored.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--scale", type=click.FloatRange(0.0, 1.0, min_open=True), default=1.0, show_default=True,
              help="Paired mode: processing scale of every dehazer (CLIPHaze: fields at this scale, guided-upsampled).")
def eval_command(data: Path, weights: Path | None, use_dcp: bool, csv_path: Path | None, grid_path: Path | None,
                 max_images: int | None, every: int, max_frames: int, device: str, scale: float) -> None:
    """Score dehazers on a paired dataset folder (PSNR/SSIM at full resolution), or on a hazy video without
    ground truth (dark channel, contrast, colourfulness, CLIP density before/after)."""
    from cliphaze.evaluate import EvaluationError, evaluate_pairs, evaluate_video
    from cliphaze.train.layouts import DatasetLayoutError, detect_layout
    from pipelines.video_frames import VideoReadError, iter_video_frames

    try:
        dehazers = _dehazers(weights, use_dcp, device)
        if data.is_file():
            if data.suffix.lower() not in VIDEO_SUFFIXES:
                raise TrainInputError(f"{data} is a file but not a video ({', '.join(VIDEO_SUFFIXES)})")
            for name, dehazer in dehazers.items():
                per_method_csv = None if csv_path is None else csv_path.with_stem(f"{csv_path.stem}_{name}")
                frames = iter_video_frames(data, every=every, max_frames=max_frames)
                report = evaluate_video(dehazer, frames, csv_path=per_method_csv)
                click.echo(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in report.means.items()))
            return
        layout = detect_layout(data)
        pairs = [(p.hazy, p.clear) for p in layout.pairs][:max_images]
        report = evaluate_pairs(pairs, dehazers, csv_path=csv_path, grid_path=grid_path, scale=scale)
    except (DatasetLayoutError, EvaluationError, VideoReadError) as error:
        raise _bad_input(error) from error
    click.echo(f"{'method':14s} {'images':>6s} {'PSNR dB':>8s} {'SSIM':>7s} {'SSIM-DF':>8s} {'ms':>8s} "
               f"{'seams 8/16/32 px (excess over clean; ~0 = none)':>20s}")
    for s in report.summary.values():
        click.echo(f"{s.method:14s} {s.images:6d} {s.psnr_db:8.2f} {s.ssim:7.4f} {s.ssim_dehazeformer:8.4f} "
                   f"{s.ms:8.0f} {s.seams_8:+.3f} / {s.seams_16:+.3f} / {s.seams_32:+.3f}")
