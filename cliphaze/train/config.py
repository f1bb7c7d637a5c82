"""Frozen configuration of stage-2 training (the network; CLIP and prompts frozen), nested by concern.

Defaults follow spec 3.2 (DehazeFormer recipe: AdamW, cosine to lr x 1e-2, L1, crops + flips) scaled
for small batches. ``to_dict`` / ``from_dict`` give the JSON stored next to every resume state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cliphaze.train.data import AugmentConfig

AMP_MODES = ("auto", "off", "bf16", "fp16")


class TrainConfigError(ValueError):
    """An invalid training option."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise TrainConfigError(message)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, and gradient clipping."""

    lr: float = 2e-4  # peak learning rate (spec 3.2: 2e-4 at batch 16)
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not applied to norms, biases, A_log, D)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam moment decay rates
    warmup_steps: int = 0  # linear warm-up from lr / warmup_steps to lr
    min_lr_ratio: float = 1e-2  # cosine ends at lr * min_lr_ratio
    grad_clip_norm: float = 1.0  # max global L2 norm of the gradients; 0 = no clipping
    airlight_lr_mult: float = 1.0  # lr x this for the airlight head (a new head on a trained net catches up)

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "weight_decay must be >= 0")
        _check(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        _check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]")
        _check(self.grad_clip_norm >= 0, "grad_clip_norm must be >= 0")
        _check(self.airlight_lr_mult > 0, "airlight_lr_mult must be > 0")


@dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often the exact-resume state is written."""

    out_dir: str = "runs/train"  # folder of resume states, history and the final bundle
    every_steps: int = 500  # write a resume state every this many steps (and at the end)
    keep_last: int = 2  # resume states kept on disk (older ones are deleted)

    def __post_init__(self) -> None:
        _check(self.every_steps >= 1, "checkpoint every_steps must be >= 1")
        _check(self.keep_last >= 1, "keep_last must be >= 1")


@dataclass(frozen=True)
class ValidationConfig:
    """Validation PSNR/SSIM of the EMA weights on the held-out split."""

    every_steps: int = 500  # validate every this many steps (and at the end); 0 = only at the end
    max_images: int = 16  # held-out images used per validation
    max_side_px: int = 512  # larger images are centre-cropped to this side (bounds CPU time)

    def __post_init__(self) -> None:
        _check(self.every_steps >= 0, "validation every_steps must be >= 0")
        _check(self.max_images >= 1 and self.max_side_px >= 8, "max_images >= 1 and max_side_px >= 8")


@dataclass(frozen=True)
class TrainConfig:
    """Stage 2: the CLIPHaze network on hazy/clear crops, CLIP guidance frozen."""

    variant: str = "cliphaze-t"  # network variant (cliphaze.config.VARIANTS)
    steps: int = 20000  # optimisation steps in total (a resumed run continues to this)
    batch_size: int = 8  # crops per step
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # crops and flips
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimiser and schedule
    ema_decay: float = 0.999  # EMA of the weights (warm-up: min(decay, (1 + step) / (10 + step)))
    fft_loss_weight: float = 0.0  # weight of the FFT-amplitude L1 term next to the L1 loss
    field_loss_weight: float = 0.0  # weight of the K/Bb supervision by synthetic haze's t and A (losses.py)
    amp: str = "auto"  # "auto" (fp16 + GradScaler on CUDA, fp32 on CPU), "off", "bf16", "fp16"
    seed: int = 0  # seeds initialisation, data order, crops and synthetic haze
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:N"
    num_workers: int = 0  # data-loader worker processes (0 = load in the training process)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # resume states
    validation: ValidationConfig = field(default_factory=ValidationConfig)  # held-out metrics

    def __post_init__(self) -> None:
        _check(self.steps >= 1 and self.batch_size >= 1, "steps and batch_size must be >= 1")
        _check(0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)")
        _check(self.fft_loss_weight >= 0, "fft_loss_weight must be >= 0")
        _check(self.field_loss_weight >= 0, "field_loss_weight must be >= 0")
        _check(self.amp in AMP_MODES, f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        _check(self.num_workers >= 0, "num_workers must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        try:
            optim = dict(data.pop("optim", {}))
            if "betas" in optim:
                optim["betas"] = tuple(optim["betas"])
            return cls(
                augment=AugmentConfig(**data.pop("augment", {})),
                optim=OptimConfig(**optim),
                checkpoint=CheckpointConfig(**data.pop("checkpoint", {})),
                validation=ValidationConfig(**data.pop("validation", {})),
                **data,
            )
        except TypeError as exc:
            raise TrainConfigError(f"invalid training config: {exc}") from exc

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
