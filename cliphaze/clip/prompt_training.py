"""Stage 1: learning the hazy/clear prompt pair with CLIP frozen (spec 2.7, CLIP-LIT recipe).

Loss: 2-way cross-entropy of ``tau * <f_img, t_k>`` (tau = 100) on pooled, L2-normalised image features of
hazy (label 0) and clear (label 1) images, classes balanced by sampling. Optional patch-level term: clear
images get spatially varying synthetic haze (``I = J t + A (1 - t)``, ``t = exp(-beta(x) d(x))``), the true
haze amount ``1 - t`` is average-pooled to the patch grid, and a per-patch BCE ties the density map
``sigmoid(tau (<p, t_h> - <p, t_c>))`` to it.

CLIP being frozen, image features are computed ONCE per image and augmented view (the 8 flips/transposes
of CLIP-LIT's dihedral augmentations); each step then only runs the text tower on the two prompts. This
makes stage 1 cheap: a few thousand steps take minutes on a CPU for ViT-B/32. (CLIP-LIT's mild zoom /
rotation augmentations are not reproduced.)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cliphaze.clip import vit
from cliphaze.clip.density import DENSITY_TEMPERATURE, density_logits
from cliphaze.clip.errors import PromptError
from cliphaze.clip.prompts import (
    CLEAR,
    HAZY,
    NUM_CONTEXT_TOKENS,
    PromptSet,
    encode_prompt_embeddings,
    init_prompt_embeddings,
    make_prompt_set,
)
from cliphaze.clip.towers import ClipSpec, LoadedClip, create_clip, freeze
from cliphaze.preprocess import frames_to_unit, to_clip_input

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
NUM_DIHEDRAL_VIEWS = 8  # identity, flips, transposes and their compositions


@dataclass(frozen=True)
class PromptTrainConfig:
    """Stage-1 hyper-parameters (defaults: CLIP-LIT prompt settings, spec 2.7)."""

    steps: int = 2000  # optimisation steps
    batch_size: int = 16  # images per step, half hazy and half clear
    lr: float = 5e-6  # Adam learning rate
    weight_decay: float = 1e-3  # Adam weight decay
    eval_every: int = 20  # steps between full-set evaluations; the lowest-loss prompts are kept
    load_size_px: int = 256  # images are squash-resized to this side first (CLIP-LIT)
    input_size_px: int = 224  # CLIP input side
    num_context_tokens: int = NUM_CONTEXT_TOKENS  # learnable "X" tokens per prompt
    init_texts: tuple[str, str] | None = None  # (hazy, clear) start texts instead of "X X ... X"
    augment: bool = True  # precompute the 8 dihedral views of every image (else the image only)
    patch_loss_weight: float = 0.0  # weight of the patch-level BCE term (0 = off)
    haze_samples: int = 2  # synthetic hazy versions per clear image for the patch term
    beta_range: tuple[float, float] = (0.3, 3.0)  # range of the scattering coefficient field beta(x)
    airlight_range: tuple[float, float] = (0.7, 1.0)  # grey airlight A
    noise_cells: int = 4  # cells per side of the smooth random fields (beta and depth)
    feature_batch: int = 32  # images per frozen-CLIP forward while precomputing features
    temperature: float = DENSITY_TEMPERATURE  # tau, fixed
    seed: int = 0  # sampling, synthetic haze and initialisation seed

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.eval_every < 1:
            raise PromptError("steps >= 1, batch_size >= 2 and eval_every >= 1 are required")
        if self.patch_loss_weight < 0 or self.haze_samples < 1:
            raise PromptError("patch_loss_weight must be >= 0 and haze_samples >= 1")


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files of a folder (non-recursive), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PromptError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PromptError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def load_images(files: list[Path], size_px: int) -> torch.Tensor:
    """(N, 3, size, size) float [0, 1], squash-resized (bicubic, antialias)."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for path in files:
        try:
            with Image.open(path) as img:
                rgb = torch.from_numpy(np.asarray(img.convert("RGB")).copy())
        except (UnidentifiedImageError, OSError) as err:
            raise PromptError(f"cannot read image {path}: {err}") from err
        unit = frames_to_unit(rgb.unsqueeze(0))
        out.append(F.interpolate(unit, size=(size_px, size_px), mode="bicubic", antialias=True).clamp_(0, 1))
    return torch.cat(out)


def dihedral_views(images: torch.Tensor, augment: bool) -> torch.Tensor:
    """(N, 3, S, S) -> (N * V, 3, S, S): the 8 flips/transposes (V = 8) or the images only (V = 1)."""
    if not augment:
        return images
    views = []
    for transpose in (False, True):
        base = images.transpose(-1, -2) if transpose else images
        for dims in ((), (-1,), (-2,), (-2, -1)):
            views.append(base.flip(dims) if dims else base)
    return torch.stack(views, dim=1).flatten(0, 1)


def smooth_field(n: int, size: int, cells: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 1, size, size) smooth random field in [0, 1] (bicubic upsampled uniform noise, min-max scaled)."""
    noise = torch.rand(n, 1, cells, cells, generator=generator)
    field = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
    lo = field.amin(dim=(-2, -1), keepdim=True)
    hi = field.amax(dim=(-2, -1), keepdim=True)
    return (field - lo) / (hi - lo).clamp_min(1e-6)


def synthesize_haze(clear: torch.Tensor, config: PromptTrainConfig, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatially varying haze on clear images.

    Args:
        clear: (N, 3, S, S) in [0, 1].

    Returns:
        Hazy images (N, 3, S, S) in [0, 1] and the transmission t (N, 1, S, S) in (0, 1].
    """
    n, _, size, _ = clear.shape
    lo, hi = config.beta_range
    beta = lo + (hi - lo) * smooth_field(n, size, config.noise_cells, generator)
    ramp = torch.linspace(1.0, 0.0, size).view(1, 1, size, 1)  # far at the top
    depth = 0.5 * ramp + 0.5 * smooth_field(n, size, config.noise_cells, generator)
    t = torch.exp(-beta * depth)
    a_lo, a_hi = config.airlight_range
    airlight = a_lo + (a_hi - a_lo) * torch.rand(n, 1, 1, 1, generator=generator)
    return (clear * t + airlight * (1 - t)).clamp(0, 1), t


@torch.no_grad()
def _features(visual: torch.nn.Module, images: torch.Tensor, config: PromptTrainConfig, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled (N, D) and patch (N, gh, gw, D) L2-normalised features of [0, 1] images (frozen CLIP)."""
    dtype = visual.proj.dtype
    pooled, patches = [], []
    gh, gw = vit.grid_size(visual, config.input_size_px, config.input_size_px)
    for chunk in images.split(config.feature_batch):
        clip_input = to_clip_input(chunk.to(device), config.input_size_px).to(dtype)
        x, _ = vit.run_blocks(visual, vit.embed(visual, clip_input))
        pooled.append(F.normalize(vit.pool(visual, x).float(), dim=-1))
        tokens = vit.project_tokens(visual, x)[:, vit.NUM_PREFIX_TOKENS:].float()
        patches.append(F.normalize(tokens, dim=-1).reshape(-1, gh, gw, tokens.shape[-1]))
    return torch.cat(pooled), torch.cat(patches)


def _losses(
    text: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, config: PromptTrainConfig,
    patch_feats: torch.Tensor | None, patch_targets: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total loss, CE loss, accuracy) of normalised text features (2, D) on a feature batch."""
    logits = config.temperature * feats @ text.t()
    ce = F.cross_entropy(logits, labels)
    accuracy = (logits.argmax(dim=-1) == labels).float().mean()
    total = ce
    if patch_feats is not None and patch_targets is not None and config.patch_loss_weight > 0:
        patch_logits = density_logits(patch_feats, text, config.temperature)
        total = total + config.patch_loss_weight * F.binary_cross_entropy_with_logits(patch_logits, patch_targets)
    return total, ce, accuracy


def train_prompts(
    hazy_dir: str | os.PathLike[str],
    clear_dir: str | os.PathLike[str],
    clip: ClipSpec | LoadedClip,
    *,
    config: PromptTrainConfig | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> PromptSet:
    """Learn hazy/clear prompts for a frozen CLIP from two folders of images.

    Args:
        hazy_dir: hazy images (label 0).
        clear_dir: clear images (label 1); also the source of the synthetic haze of the patch term.
        clip: which CLIP (built with :func:`cliphaze.clip.towers.create_clip`) or an already loaded one.
        config: hyper-parameters (CLIP-LIT defaults).
        progress: show a tqdm progress bar.

    Returns:
        The lowest-loss prompts seen at the evaluations, with ``stats`` (initial/final loss, accuracy, steps).
    """
    from tqdm.auto import tqdm

    config = config or PromptTrainConfig()
    device = torch.device(device)
    loaded = clip if isinstance(clip, LoadedClip) else create_clip(clip, device=device)
    model = freeze(loaded.model).to(device)  # CLIP stays frozen: only the prompt embeddings learn
    visual = model.visual
    vit.check_vision_tower(visual)
    generator = torch.Generator().manual_seed(config.seed)

    hazy = load_images(list_images(hazy_dir), config.load_size_px)
    clear = load_images(list_images(clear_dir), config.load_size_px)
    hazy_feats, _ = _features(visual, dihedral_views(hazy, config.augment), config, device)
    clear_feats, clear_patches = _features(visual, dihedral_views(clear, config.augment), config, device)
    feats = torch.cat([hazy_feats, clear_feats])
    labels = torch.cat([torch.full((len(hazy_feats),), HAZY), torch.full((len(clear_feats),), CLEAR)]).to(device)

    patch_feats = patch_targets = None
    if config.patch_loss_weight > 0:
        gh, gw = vit.grid_size(visual, config.input_size_px, config.input_size_px)
        synth, t = synthesize_haze(clear.repeat(config.haze_samples, 1, 1, 1), config, generator)
        _, synth_patches = _features(visual, synth, config, device)
        clear_only = clear_patches[:: NUM_DIHEDRAL_VIEWS if config.augment else 1]
        patch_feats = torch.cat([synth_patches, clear_only])
        patch_targets = torch.cat([
            1.0 - F.adaptive_avg_pool2d(t, (gh, gw)),
            torch.zeros(len(clear_only), 1, gh, gw),
        ]).to(device)

    embeddings, eot = init_prompt_embeddings(model, num_context_tokens=config.num_context_tokens,
                                             init_texts=config.init_texts)
    eot = eot.to(device)
    params = torch.nn.Parameter(embeddings.to(device))
    optimizer = torch.optim.Adam([params], lr=config.lr, weight_decay=config.weight_decay)

    def evaluate() -> tuple[float, float, float]:
        with torch.no_grad():
            text = F.normalize(encode_prompt_embeddings(model, params, eot).float(), dim=-1)
            total, ce, acc = _losses(text, feats, labels, config, patch_feats, patch_targets)
        return float(total), float(ce), float(acc)

    initial_loss, initial_ce, initial_acc = evaluate()
    best = (initial_loss, initial_ce, initial_acc, params.detach().clone(), 0)
    half = config.batch_size // 2
    bar = tqdm(range(1, config.steps + 1), desc="prompts", disable=not progress, leave=False)
    for step in bar:
        idx_h = torch.randint(len(hazy_feats), (half,), generator=generator)
        idx_c = len(hazy_feats) + torch.randint(len(clear_feats), (config.batch_size - half,), generator=generator)
        idx = torch.cat([idx_h, idx_c]).to(device)
        pf = pt = None
        if patch_feats is not None and patch_targets is not None:
            pidx = torch.randint(len(patch_feats), (config.batch_size,), generator=generator).to(device)
            pf, pt = patch_feats[pidx], patch_targets[pidx]
        text = F.normalize(encode_prompt_embeddings(model, params, eot).float(), dim=-1)
        loss, _, _ = _losses(text, feats[idx], labels[idx], config, pf, pt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % config.eval_every == 0 or step == config.steps:
            total, ce, acc = evaluate()
            bar.set_postfix(loss=f"{total:.4f}", acc=f"{acc:.3f}")
            if total < best[0]:
                best = (total, ce, acc, params.detach().clone(), step)
    total, ce, acc, best_params, best_step = best
    logger.info("prompt learning: loss %.4f -> %.4f, accuracy %.3f -> %.3f (best step %d of %d)",
                initial_loss, total, initial_acc, acc, best_step, config.steps)
    stats = {
        "initial_loss": initial_loss, "final_loss": total, "initial_accuracy": initial_acc,
        "final_ce": ce, "accuracy": acc, "best_step": float(best_step), "steps": float(config.steps),
        "num_hazy": float(len(hazy)), "num_clear": float(len(clear)),
    }
    return make_prompt_set(model, loaded.identity, best_params, eot, stats)
