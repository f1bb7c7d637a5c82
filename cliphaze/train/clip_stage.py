"""Stage 1 without pretrained CLIP: small open_clip towers and the prompt pair trained jointly from scratch.

Used for the shipped default model, where pretrained CLIP weights cannot be downloaded. Both towers and
the hazy/clear prompt embeddings are trained on clean images and their synthetic-haze versions with the
prompt objective of spec 2.7:

* pooled 2-way cross-entropy of ``tau * <f_img, t_k>`` (label 0 hazy, 1 clear);
* per-patch BCE between the density map ``sigmoid(tau (<p, t_h> - <p, t_c>))`` and the true haze amount
  ``1 - t`` pooled to the patch grid (0 for clear images).

The CLIP input is a random crop of random aspect, squash-resized to the tower's input size (inference
squash-resizes whole frames, spec 2.4.1), hazed at that size. The result is a frozen
:class:`~cliphaze.clip.encoder.GuidanceEncoder` whose semantic tokens are the small tower's projected
output tokens (no DA-CLIP: there is no degradation-free teacher to learn from here).

For pretrained CLIP (the paper configuration) use :func:`cliphaze.clip.train_prompts` instead, which keeps
CLIP frozen.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cliphaze.losses import density_target
from cliphaze.preprocess import to_clip_input
from cliphaze.train.data import image_to_tensor, to_rgb_uint8
from cliphaze.train.synthetic import HazeConfig, synthesize_haze

logger = logging.getLogger(__name__)

# Architecture name of the shipped small CLIP (its config is embedded in bundles, no registry needed).
SMALL_CLIP_NAME = "cliphaze-clip-small"
# open_clip config of the shipped small CLIP: a 4-layer ViT/32 at 224 px (7x7 patch grid, like ViT-B/32)
# with a 512-d joint space (so cliphaze-t's 512-d SAM inputs are unchanged) and a minimal text tower: the
# prompts are free embeddings, so the text tower only has to carry them (its 49408-token embedding table
# is open_clip's fixed vocabulary and dominates its size).
SMALL_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 96, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}
LABEL_HAZY, LABEL_CLEAR = 0, 1


class ClipStageError(ValueError):
    """Invalid options or data for joint CLIP-tower training."""


@dataclass(frozen=True)
class ClipStageConfig:
    """Joint training of small CLIP towers and prompts (shipped default model, stage 1)."""

    steps: int = 800  # optimisation steps
    batch_size: int = 32  # CLIP inputs per step
    lr: float = 1e-3  # AdamW peak learning rate (from scratch: much higher than CLIP-LIT's 5e-6)
    weight_decay: float = 0.05  # AdamW weight decay of the towers (not of the prompts)
    warmup_steps: int = 50  # linear warm-up
    clear_fraction: float = 0.3  # share of clean (label clear, density 0) inputs per batch
    patch_loss_weight: float = 1.0  # weight of the per-patch density BCE next to the pooled CE
    temperature: float = 10.0  # tau of both objectives (and of the density map at inference)
    min_crop_fraction: float = 0.25  # crop sides are drawn in [fraction, 1] x the image side
    num_context_tokens: int = 16  # learnable context tokens per prompt (CoOp / CLIP-LIT)
    seed: int = 0  # sampling, haze and initialisation seed

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise ClipStageError("steps >= 1 and batch_size >= 2 are required")
        if not 0.0 < self.clear_fraction < 1.0 or not 0.0 < self.min_crop_fraction <= 1.0:
            raise ClipStageError("clear_fraction must be in (0, 1) and min_crop_fraction in (0, 1]")
        if self.temperature <= 0:
            raise ClipStageError("temperature must be > 0")


@dataclass
class ClipStageResult:
    """The trained towers as a frozen guidance encoder, and the training summary."""

    encoder: Any  # cliphaze.clip.encoder.GuidanceEncoder (fp32, frozen)
    stats: dict[str, float]  # initial/final loss and pooled accuracy, density MAE, steps


def _random_view(image: np.ndarray, size: int, generator: torch.Generator, min_fraction: float) -> torch.Tensor:
    """Random crop (random aspect) of an RGB uint8 image, squash-resized to (3, size, size) in [0, 1]."""
    import cv2

    h, w = image.shape[:2]

    def side(n: int) -> int:
        return max(1, round(n * (min_fraction + (1 - min_fraction) * float(torch.rand((), generator=generator)))))

    ch, cw = side(h), side(w)
    top = int(torch.randint(h - ch + 1, (), generator=generator))
    left = int(torch.randint(w - cw + 1, (), generator=generator))
    crop = image[top : top + ch, left : left + cw]
    interp = cv2.INTER_AREA if min(ch, cw) > size else cv2.INTER_CUBIC
    view = image_to_tensor(cv2.resize(crop, (size, size), interpolation=interp))
    return view.flip(-1) if bool(torch.rand((), generator=generator) < 0.5) else view


def make_batch(
    images: Sequence[np.ndarray], config: ClipStageConfig, haze: HazeConfig, generator: torch.Generator,
    size: int, grid: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of CLIP views: (B, 3, size, size) in [0, 1], labels (B,), density targets (B, 1, gh, gw)."""
    views, labels, targets = [], [], []
    n_clear = max(1, round(config.batch_size * config.clear_fraction))
    for i in range(config.batch_size):
        image = images[int(torch.randint(len(images), (), generator=generator))]
        view = _random_view(image, size, generator, config.min_crop_fraction)
        if i < n_clear:
            views.append(view)
            labels.append(LABEL_CLEAR)
            targets.append(torch.zeros(1, *grid))
        else:
            sample = synthesize_haze(view, generator, haze)
            views.append(sample.hazy)
            labels.append(LABEL_HAZY)
            targets.append(density_target(sample.transmission[None], grid)[0])
    return torch.stack(views), torch.tensor(labels), torch.stack(targets)


class _BatchStream(torch.utils.data.Dataset):
    """Batch ``step`` of stage 1 as a pure function of ``(seed, step)``, so data-loader workers can build them."""

    def __init__(self, images: Sequence[np.ndarray], config: ClipStageConfig, haze: HazeConfig, size: int,
                 grid: tuple[int, int]) -> None:
        self.images, self.config, self.haze, self.size, self.grid = images, config, haze, size, grid

    def __len__(self) -> int:
        return self.config.steps

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from cliphaze.train.data import sample_generator

        generator = sample_generator(self.config.seed, step)
        return make_batch(self.images, self.config, self.haze, generator, self.size, self.grid)


def _lr_factor(step: int, config: ClipStageConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_clip_towers(
    images: Sequence[np.ndarray],
    *,
    config: ClipStageConfig | None = None,
    haze: HazeConfig | None = None,
    model_name: str = SMALL_CLIP_NAME,
    model_config: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    init: ClipStageResult | None = None,
    num_workers: int = 0,
    time_budget_s: float | None = None,
) -> ClipStageResult:
    """Train a small CLIP (both towers) and the hazy/clear prompts from scratch on synthetic haze.

    Args:
        images: clean RGB (or grey) uint8 training images (H, W[, 3]).
        config: optimisation options.
        haze: synthetic-haze ranges (both kinds by default).
        model_name: name recorded for the architecture.
        model_config: open_clip model config (default :data:`SMALL_CLIP_CONFIG`).
        device: where to train.
        progress: show a tqdm bar.
        init: continue from these towers and prompts (e.g. a shipped bundle's) instead of a random start;
            ``model_config`` is then theirs.
        num_workers: data-loader processes that build the batches (batch ``k`` depends on (seed, k) only).
        time_budget_s: stop after this many seconds (the schedule still spans ``config.steps``).

    Returns:
        A frozen fp32 GuidanceEncoder (density map + plain-tower tokens) on ``device``, and statistics.
    """
    from tqdm.auto import tqdm

    from cliphaze.clip import vit
    from cliphaze.clip.density import density_logits
    from cliphaze.clip.encoder import GuidanceConfig, GuidanceEncoder
    from cliphaze.clip.prompts import encode_prompt_embeddings, init_prompt_embeddings, make_prompt_set
    from cliphaze.clip.towers import (
        ClipIdentity,
        ClipSpec,
        LoadedClip,
        build_clip,
        config_hash,
        freeze,
        weights_fingerprint,
    )

    config = config or ClipStageConfig()
    haze = haze or HazeConfig()
    model_config = dict(init.encoder.clip.config if init is not None else (model_config or SMALL_CLIP_CONFIG))
    if not images:
        raise ClipStageError("no training images")
    images = [to_rgb_uint8(im) for im in images]
    device = torch.device(device)
    torch.manual_seed(config.seed)
    model = build_clip(model_config)
    if init is not None:
        model.load_state_dict(init.encoder.clip.model.state_dict(), strict=True)
        model_name = init.encoder.identity.model_name
    model = model.to(device).train()
    visual = model.visual
    vit.check_vision_tower(visual)
    size = int(model_config["vision_cfg"]["image_size"])
    grid = vit.grid_size(visual, size, size)
    if init is not None:
        embeddings, eot = init.encoder.prompts.embeddings.clone(), init.encoder.prompts.eot_indices.clone()
    else:
        embeddings, eot = init_prompt_embeddings(model, num_context_tokens=config.num_context_tokens)
    prompts = torch.nn.Parameter(embeddings.to(device))
    eot = eot.to(device)
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": config.weight_decay},
         {"params": [prompts], "weight_decay": 0.0}],
        lr=config.lr,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    tau = config.temperature
    history: list[tuple[float, float, float]] = []
    loader = torch.utils.data.DataLoader(_BatchStream(images, config, haze, size, grid), batch_size=None,
                                         num_workers=num_workers)
    bar = tqdm(loader, desc="clip towers", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    for views, labels, targets in bar:
        if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
            logger.info("stage-1 time budget of %.0f s used up after %d of %d steps", time_budget_s, len(history),
                        config.steps)
            break
        clip_input = to_clip_input(views.to(device), size)
        x, _ = vit.run_blocks(visual, vit.embed(visual, clip_input))
        pooled = F.normalize(vit.pool(visual, x), dim=-1)
        patches = F.normalize(vit.project_tokens(visual, x)[:, vit.NUM_PREFIX_TOKENS :], dim=-1)
        patches = patches.reshape(-1, grid[0], grid[1], patches.shape[-1])
        text = F.normalize(encode_prompt_embeddings(model, prompts, eot), dim=-1)
        ce = F.cross_entropy(tau * pooled @ text.t(), labels.to(device))
        logits = density_logits(patches, text, tau)
        bce = F.binary_cross_entropy_with_logits(logits, targets.to(device))
        loss = ce + config.patch_loss_weight * bce
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            accuracy = float(((pooled @ text.t()).argmax(-1).cpu() == labels).float().mean())
            mae = float((torch.sigmoid(logits).cpu() - targets).abs().mean())
        history.append((float(loss.detach()), accuracy, mae))
        bar.set_postfix(loss=f"{history[-1][0]:.3f}", acc=f"{accuracy:.2f}", dens_mae=f"{mae:.3f}")
    freeze(model)
    identity = ClipIdentity(
        model_name=model_name,
        config_hash=config_hash(model_config),
        pretrained="trained-from-scratch",
        weights_hash=weights_fingerprint(model),
    )
    tail = np.array(history[-min(50, len(history)) :])
    stats = {
        "steps": float(len(history)),
        "initial_loss": history[0][0],
        "final_loss": float(tail[:, 0].mean()),
        "accuracy": float(tail[:, 1].mean()),
        "density_mae": float(tail[:, 2].mean()),
    }
    prompt_set = make_prompt_set(model, identity, prompts.detach(), eot, stats)
    clip = LoadedClip(model=model, config=model_config, identity=identity)
    guidance_config = GuidanceConfig(
        clip=ClipSpec(model_name=model_name, pretrained=None,
                      model_config_json=json.dumps(model_config, sort_keys=True)),
        input_size_px=size,
        density_temperature=tau,
    )
    encoder = GuidanceEncoder(guidance_config, clip, prompts=prompt_set, device=device)
    logger.info("clip towers: loss %.3f -> %.3f, accuracy %.3f, density MAE %.3f", stats["initial_loss"],
                stats["final_loss"], stats["accuracy"], stats["density_mae"])
    return ClipStageResult(encoder=encoder, stats=stats)


TOWERS_KIND = "cliphaze-clip-towers"


def save_towers(path: str, result: ClipStageResult) -> None:
    """Save trained towers + prompts + guidance config (safetensors) so stage 2 can resume without stage 1."""
    from cliphaze.checkpoint import write_safetensors

    encoder = result.encoder
    tensors = {f"clip.{k}": v for k, v in encoder.clip.model.state_dict().items()}
    tensors.update(encoder.prompts.to_tensors("prompts."))
    metadata = {
        "kind": TOWERS_KIND,
        "model_config": json.dumps(encoder.clip.config, sort_keys=True),
        "identity": json.dumps(encoder.identity.to_dict()),
        "prompts": json.dumps(encoder.prompts.metadata(), sort_keys=True),
        "guidance_config": json.dumps(encoder.config.to_dict(), sort_keys=True),
        "stats": json.dumps(result.stats),
    }
    write_safetensors(path, tensors, metadata)


def load_towers(path: str, *, device: torch.device | str = "cpu") -> ClipStageResult:
    """Inverse of :func:`save_towers`: a frozen fp32 GuidanceEncoder on ``device`` and the stage-1 stats."""
    from cliphaze.checkpoint import read_safetensors
    from cliphaze.clip.encoder import GuidanceConfig, GuidanceEncoder
    from cliphaze.clip.prompts import PromptSet
    from cliphaze.clip.towers import ClipIdentity, LoadedClip, build_clip, freeze

    tensors, metadata = read_safetensors(path)
    if metadata.get("kind") != TOWERS_KIND:
        raise ClipStageError(f"{path} is not a trained-towers file (kind {metadata.get('kind')!r})")
    model_config = json.loads(metadata["model_config"])
    model = build_clip(model_config)
    model.load_state_dict({k[len("clip."):]: v for k, v in tensors.items() if k.startswith("clip.")}, strict=True)
    identity = ClipIdentity.from_dict(json.loads(metadata["identity"]))
    prompts = PromptSet.from_tensors(tensors, json.loads(metadata["prompts"]), prefix="prompts.")
    clip = LoadedClip(model=freeze(model), config=model_config, identity=identity)
    config = GuidanceConfig.from_dict(json.loads(metadata["guidance_config"]))
    encoder = GuidanceEncoder(config, clip, prompts=prompts, device=device)
    return ClipStageResult(encoder=encoder, stats=json.loads(metadata["stats"]))
