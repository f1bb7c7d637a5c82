"""Stage 2: train the CLIPHaze network on hazy/clear crops with CLIP guidance frozen.

AdamW + warm-up/cosine schedule, gradient clipping, EMA of the weights, AMP (fp16 + GradScaler on
CUDA, optional bf16), L1 loss on the [-1, 1] output (plus, optionally, supervision of the
reconstruction fields by synthetic haze's transmission and airlight), validation PSNR/SSIM of the EMA weights on
held-out images, a tqdm bar with loss and it/s, and exact resume from the states of
:mod:`cliphaze.train.state`. Data is position-indexed (:mod:`cliphaze.train.data`), so a resumed run
sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cliphaze.guidance_types import Guidance
from cliphaze.losses import ReconstructionLoss, scattering_field_loss
from cliphaze.metrics import psnr, ssim
from cliphaze.model import ClipHazeNet, reconstruct
from cliphaze.preprocess import model_to_unit, unit_to_model
from cliphaze.train.config import TrainConfig
from cliphaze.train.data import PositionSampler
from cliphaze.train.state import (
    ModelEma,
    TrainObjects,
    latest_state,
    prune_states,
    read_state,
    restore_state,
    save_state,
)

logger = logging.getLogger(__name__)

# Parameters named like this get no weight decay (spec 2.3.2: A_log and D; plus norms and biases).
NO_DECAY_SUFFIXES = ("A_log", ".D", "bias")
HISTORY_FILE = "history.jsonl"
# Smoothing of the loss shown on the progress bar.
LOSS_DISPLAY_SMOOTHING = 0.9

# hazy (B, 3, H, W) in [0, 1] -> guidance for the network (computed without gradients).
GuidanceFn = Callable[[torch.Tensor], Guidance]


@dataclass
class TrainResult:
    """What :func:`train_network` returns."""

    model: ClipHazeNet  # the EMA weights (what gets shipped), eval mode
    raw_model: ClipHazeNet  # the optimised weights
    step: int  # steps done
    history: list[dict[str, Any]] = field(default_factory=list)  # logged rows (loss, lr, validation)
    wall_s: float = 0.0  # wall time of this call


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; other names as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for an AMP mode (None = full fp32). ``auto``: fp16 on CUDA, fp32 on CPU."""
    if mode == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak lr after ``step`` steps: linear warm-up, then cosine to ``min_lr_ratio``."""
    o = config.optim
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    span = max(1, config.steps - o.warmup_steps)
    progress = min(1.0, (step - o.warmup_steps) / span)
    return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float, airlight_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups: decayed weights, and 1-D tensors / biases / A_log / D without decay; the airlight
    head's parameters (``airlight.``) in their own pair of groups with ``lr_mult`` = ``airlight_lr_mult``."""
    # (head, decayed) in this order, so states of nets without the head keep their two groups.
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {(False, True): [], (False, False): [],
                                                                 (True, True): [], (True, False): []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decayed = not (p.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES))
            groups[(name.startswith("airlight."), decayed)].append(p)
    return [{"params": params, "weight_decay": weight_decay if decayed else 0.0,
             "lr_mult": airlight_lr_mult if head else 1.0}
            for (head, decayed), params in groups.items() if params or not head]


def build_objects(model: ClipHazeNet, config: TrainConfig, device: torch.device) -> TrainObjects:
    """Optimizer, scheduler, grad scaler and EMA for ``model``."""
    groups = param_groups(model, config.optim.weight_decay, config.optim.airlight_lr_mult)
    for group in groups:
        group["lr"] = config.optim.lr * group.pop("lr_mult")
    optimizer = torch.optim.AdamW(groups, lr=config.optim.lr, betas=config.optim.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    use_scaler = resolve_amp(config.amp, device) == torch.float16 and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    return TrainObjects(model=model, ema=ModelEma(model, config.ema_decay), optimizer=optimizer,
                        scheduler=scheduler, scaler=scaler)


def apply_gradients(objects: TrainObjects, model: torch.nn.Module, loss: torch.Tensor, grad_clip_norm: float) -> None:
    """One optimizer step from ``loss``: backward through the (AMP) scaler, gradient clipping when
    ``grad_clip_norm`` > 0, the step and the scaler update. The lr schedule and the EMA stay with the caller."""
    objects.optimizer.zero_grad(set_to_none=True)
    objects.scaler.scale(loss).backward()
    if grad_clip_norm > 0:
        objects.scaler.unscale_(objects.optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    objects.scaler.step(objects.optimizer)
    objects.scaler.update()


def _center_crop(x: torch.Tensor, side: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return x[..., top : top + min(h, side), left : left + min(w, side)]


@torch.no_grad()
def validate(
    model: ClipHazeNet,
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    guidance_fn: GuidanceFn | None,
    config: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    """Mean PSNR/SSIM (skimage) of ``model`` and of the hazy input on held-out (hazy, clear) images.

    Args:
        pairs: (hazy, clear) float (3, H, W) in [0, 1]; the first ``max_images`` are used, centre-cropped to
            ``max_side_px``.
    """
    model.eval()
    rows = []
    for hazy, clear in list(pairs)[: config.validation.max_images]:
        hazy = _center_crop(hazy, config.validation.max_side_px)[None].to(device)
        clear = _center_crop(clear, config.validation.max_side_px)[None]
        g = guidance_fn(hazy) if guidance_fn is not None else Guidance()
        out = model_to_unit(model(unit_to_model(hazy), g.density, g.tokens).float()).cpu()
        rows.append((psnr(out[0], clear[0]), ssim(out[0], clear[0]), psnr(hazy[0].cpu(), clear[0])))
    a = np.array(rows)
    return {
        "val_psnr": float(a[:, 0].mean()),
        "val_ssim": float(a[:, 1].mean()),
        "val_hazy_psnr": float(a[:, 2].mean()),
    }


def _append_history(folder: Path, row: dict[str, Any]) -> None:
    with (folder / HISTORY_FILE).open("a") as f:
        f.write(json.dumps(row) + "\n")


def train_network(
    config: TrainConfig,
    train_set: Dataset,
    *,
    val_pairs: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
    guidance_fn: GuidanceFn | None = None,
    model: ClipHazeNet | None = None,
    resume: str | Path | bool | None = None,
    stop_after: int | None = None,
    time_budget_s: float | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or continue training) the network.

    Args:
        config: the run; ``config.checkpoint.out_dir`` receives resume states and ``history.jsonl``.
        train_set: position-indexed dataset of ``{"hazy", "clear"}`` crops in [0, 1] (cliphaze.train.data).
        val_pairs: held-out (hazy, clear) images (3, H, W) in [0, 1]; validation is skipped when empty.
        guidance_fn: frozen CLIP guidance of a hazy batch; None trains without guidance (CAM's bias).
        model: a network to start from (default: ``config.variant``, seeded random init).
        resume: a resume-state path, ``True`` for the newest state in ``out_dir``, or None/False.
        stop_after: stop (with a resume state) after this many steps of this call, before ``config.steps``;
            the schedule still spans ``config.steps``.
        time_budget_s: also stop (with a resume state) once this call has run this long; resume later.
        progress: show the tqdm bar.
    """
    from tqdm.auto import tqdm

    from cliphaze.factory import create_model

    start_time = time.perf_counter()
    device = resolve_device(config.device)
    out_dir = Path(config.checkpoint.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    model = (model or create_model(config.variant)).to(device)
    model.train()
    objects = build_objects(model, config, device)
    step = 0
    if resume:
        path = latest_state(out_dir) if resume is True else Path(resume)
        if path is not None:
            tensors, data = read_state(path)
            step = restore_state(tensors, data, objects)
            logger.info("resumed from %s at step %d", path, step)
    end = config.steps if stop_after is None else min(config.steps, step + stop_after)
    amp_dtype = resolve_amp(config.amp, device)
    loss_fn = ReconstructionLoss(fft_weight=config.fft_loss_weight)
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=PositionSampler(step * config.batch_size, max(0, end - step) * config.batch_size),
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        generator=torch.Generator().manual_seed(config.seed),  # keeps the global RNG untouched
        persistent_workers=False,
    )
    history: list[dict[str, Any]] = []
    shown_loss: float | None = None
    bar = tqdm(total=config.steps, initial=step, desc=f"train {config.variant}", disable=not progress,
               dynamic_ncols=True)
    extra = {"config": config.to_dict()}
    for batch in loader:
        hazy = batch["hazy"].to(device, non_blocking=True)
        clear = batch["clear"].to(device, non_blocking=True)
        g = guidance_fn(hazy) if guidance_fn is not None else Guidance()
        autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                    else contextlib.nullcontext())
        supervise_fields = config.field_loss_weight > 0 and "transmission" in batch
        with autocast:
            x = unit_to_model(hazy)
            k, bb = model.forward_fields(x, g.density, g.tokens)
            pred = reconstruct(x, k, bb)
        loss = loss_fn(pred.float(), unit_to_model(clear))
        if supervise_fields:
            loss = loss + scattering_field_loss(k, bb, batch["transmission"].to(device), batch["airlight"].to(device),
                                                loss_weight=config.field_loss_weight)  # fmt: skip
        apply_gradients(objects, model, loss, config.optim.grad_clip_norm)
        objects.scheduler.step()
        objects.ema.update(model)
        step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {step}; lower the lr or use amp=off")
        smooth = LOSS_DISPLAY_SMOOTHING
        shown_loss = value if shown_loss is None else smooth * shown_loss + (1 - smooth) * value
        bar.update(1)
        bar.set_postfix(loss=f"{shown_loss:.4f}", lr=f"{objects.scheduler.get_last_lr()[0]:.2e}")
        row: dict[str, Any] = {"step": step, "loss": value, "lr": objects.scheduler.get_last_lr()[0],
                               "elapsed_s": time.perf_counter() - start_time}
        out_of_time = time_budget_s is not None and time.perf_counter() - start_time > time_budget_s
        last = step == end or out_of_time
        val_every = config.validation.every_steps
        if val_pairs and ((val_every and step % val_every == 0) or step == config.steps):
            row.update(validate(objects.ema.module, val_pairs, guidance_fn, config, device))
            logger.info("step %d: val PSNR %.2f dB (hazy %.2f), SSIM %.4f", step, row["val_psnr"],
                        row["val_hazy_psnr"], row["val_ssim"])
            bar.write(f"step {step}: val PSNR {row['val_psnr']:.2f} dB (hazy {row['val_hazy_psnr']:.2f}), "
                      f"SSIM {row['val_ssim']:.4f}")
        history.append(row)
        _append_history(out_dir, row)
        if step % config.checkpoint.every_steps == 0 or last:
            save_state(out_dir, step, objects, extra)
            prune_states(out_dir, config.checkpoint.keep_last)
        if out_of_time:
            logger.info("time budget of %.0f s used up at step %d of %d; resume to continue", time_budget_s, step,
                        config.steps)
            break
    bar.close()
    objects.ema.module.eval()
    return TrainResult(model=objects.ema.module, raw_model=model, step=step, history=history,
                       wall_s=time.perf_counter() - start_time)
