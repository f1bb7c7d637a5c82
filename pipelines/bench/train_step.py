"""One training step of a CLIPHaze variant: time per step and peak device memory (issue 15's training target).

The step is :func:`cliphaze.train.loop.train_network`'s: forward under autocast, reconstruction loss, backward,
gradient clipping, AdamW, EMA. Inputs are random hazy/clear crops and random guidance of the shapes the
shipped CLIP gives (a 7x7 density map and 50 semantic tokens), so it measures the network step and not the
data loader or the CLIP towers (those run without gradients, once per batch).

    python -m pipelines.bench.train_step --variant cliphaze-t --crop 256 --batch 16 --amp bf16 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass

import torch

GIB = 1024**3
DENSITY_GRID = (7, 7)  # the shipped CLIP's patch grid
SEMANTIC_TOKENS = 50  # 7x7 patches + the class token


@dataclass(frozen=True)
class TrainStepResult:
    variant: str
    crop_px: int
    batch: int
    amp: str
    device: str
    steps: int  # timed steps (after one warm-up step)
    ms_per_step: float  # mean wall time per step, device synchronized
    peak_gib: float  # peak allocated device memory over the warm-up and timed steps (CUDA only; 0 elsewhere)


def measure_train_step(variant: str = "cliphaze-t", *, crop_px: int = 256, batch: int = 16, amp: str = "bf16",
                       device: str = "cuda", steps: int = 3, seed: int = 0) -> TrainStepResult:  # fmt: skip
    """Time ``steps`` training steps after one warm-up step; peak memory over all of them."""
    from cliphaze.factory import create_model
    from cliphaze.losses import ReconstructionLoss
    from cliphaze.model import reconstruct
    from cliphaze.preprocess import unit_to_model
    from cliphaze.train.config import TrainConfig
    from cliphaze.train.loop import apply_gradients, build_objects, resolve_amp

    torch.manual_seed(seed)
    dev = torch.device(device)
    model = create_model(variant, device=dev).train()
    config = TrainConfig(variant=variant, batch_size=batch, amp=amp)  # the crop is the inputs' size
    objects = build_objects(model, config, dev)
    amp_dtype = resolve_amp(amp, dev)
    loss_fn = ReconstructionLoss(fft_weight=config.fft_loss_weight)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    hazy = torch.rand(batch, 3, crop_px, crop_px, generator=gen).to(dev)
    clear = torch.rand(batch, 3, crop_px, crop_px, generator=gen).to(dev)
    guidance = model.config.guidance
    density = tokens = None
    if guidance.use_dam:
        density = torch.rand(batch, 1, *DENSITY_GRID, generator=gen).to(dev)
    if guidance.use_sam:
        tokens = torch.randn(batch, SEMANTIC_TOKENS, guidance.semantic_dim, generator=gen).to(dev)

    def step() -> None:
        autocast = torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
        with autocast:
            x = unit_to_model(hazy)
            k, bb = model.forward_fields(x, density, tokens)
            pred = reconstruct(x, k, bb)
        loss = loss_fn(pred.float(), unit_to_model(clear))
        apply_gradients(objects, model, loss, config.optim.grad_clip_norm)
        objects.ema.update(model)

    is_cuda = dev.type == "cuda"
    if is_cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    step()  # warm-up: lazy initialisation, kernel compilation, optimizer state
    if is_cuda:
        torch.cuda.synchronize(dev)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if is_cuda:
        torch.cuda.synchronize(dev)
    ms = (time.perf_counter() - started) * 1000.0 / steps
    peak = torch.cuda.max_memory_allocated(dev) / GIB if is_cuda else 0.0
    return TrainStepResult(variant=variant, crop_px=crop_px, batch=batch, amp=amp, device=str(dev), steps=steps,
                           ms_per_step=ms, peak_gib=peak)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="cliphaze-t")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--amp", default="bf16", choices=("off", "bf16", "fp16"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    result = measure_train_step(args.variant, crop_px=args.crop, batch=args.batch, amp=args.amp, device=args.device,
                                steps=args.steps)  # fmt: skip
    print(json.dumps(result.__dict__))
    print(f"train step {result.variant} crop {result.crop_px} batch {result.batch} {result.amp} on {result.device}: "
          f"{result.ms_per_step:.1f} ms/step, peak {result.peak_gib:.2f} GiB")


if __name__ == "__main__":
    main()
