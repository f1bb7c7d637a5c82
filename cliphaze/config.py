"""Frozen configuration of the CLIPHaze network and its named variants (spec sections 2.2-2.6, 7).

The config is nested by concern: the U-Net stages, the window attention, the selective-scan (SS2D)
path and the CLIP-instructed aggregation (CAM). ``to_dict``/``from_dict`` give a JSON-able form that
goes into every checkpoint. ``VARIANTS`` maps variant names to configs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

# Values accepted by the string-typed switches (validated in __post_init__).
ATTENTION_IMPLS = ("sdpa", "math")
CAM_MODES = ("cam", "mean", "sum")
PATH_MODES = ("dual", "attn", "ssm")
# Runtime choices: they change how the network is executed, never its weights, so a checkpoint may be
# loaded under a config that differs only in these (dotted paths into ``to_dict()``).
RUNTIME_FIELDS = frozenset({"attention.impl", "ssm.scan_backend"})


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclass(frozen=True)
class StageConfig:
    """One U-Net stage: a run of TrambaDA blocks at one resolution."""

    dim: int  # channels C of the stage's feature maps
    depth: int  # number of TrambaDA blocks
    mlp_ratio: float = 2.0  # FFN hidden width as a multiple of dim (DehazeFormer mlp_ratios)
    use_ssm: bool = True  # keep the SS2D path in this stage's blocks (False: attention path only)

    def __post_init__(self) -> None:
        _check(self.dim >= 1, f"stage dim must be >= 1, got {self.dim}")
        _check(self.depth >= 0, f"stage depth must be >= 0, got {self.depth}")
        _check(self.mlp_ratio > 0, f"stage mlp_ratio must be > 0, got {self.mlp_ratio}")


@dataclass(frozen=True)
class AttentionConfig:
    """Window self-attention (Transformer path, spec 2.3.1)."""

    window_size: int = 8  # side of the square non-overlapping windows, pixels of the stage
    num_heads: int = 1  # attention heads (the paper's path is single-head)
    shift: bool = False  # odd blocks shift their windows by window_size // 2 (DehazeFormer style)
    pos_mlp_hidden: int = 256  # hidden width of the log-relative position-bias MLP
    impl: str = "sdpa"  # "sdpa" (torch scaled_dot_product_attention) or "math" (explicit, same weights)

    def __post_init__(self) -> None:
        _check(self.window_size >= 1, f"window_size must be >= 1, got {self.window_size}")
        _check(self.num_heads >= 1, f"num_heads must be >= 1, got {self.num_heads}")
        _check(self.pos_mlp_hidden >= 1, f"pos_mlp_hidden must be >= 1, got {self.pos_mlp_hidden}")
        _check(self.impl in ATTENTION_IMPLS, f"attention impl must be one of {ATTENTION_IMPLS}, got {self.impl!r}")


@dataclass(frozen=True)
class SSMConfig:
    """Four-direction selective scan (Mamba path, SS2D, spec 2.3.2)."""

    d_state: int = 16  # N: state size per channel
    expand: float = 2.0  # d_inner = expand * C
    d_conv: int = 3  # kernel of the depth-wise 2-D conv before the scan (odd)
    dt_rank: int = 0  # R: rank of the step-size projection; 0 = ceil(C / dt_rank_divisor)
    dt_rank_divisor: int = 16  # C / this, rounded up, gives the automatic dt_rank
    dt_min: float = 1e-3  # lower end of the initial step sizes (log-uniform)
    dt_max: float = 1e-1  # upper end of the initial step sizes
    dt_init_floor: float = 1e-4  # initial step sizes are clamped to at least this
    scan_backend: str = "auto"  # cliphaze.ops.selective_scan backend name ("auto" picks per device)

    def __post_init__(self) -> None:
        _check(self.d_state >= 1, f"d_state must be >= 1, got {self.d_state}")
        _check(self.expand > 0, f"expand must be > 0, got {self.expand}")
        _check(self.d_conv >= 1 and self.d_conv % 2 == 1, f"d_conv must be odd and >= 1, got {self.d_conv}")
        _check(self.dt_rank >= 0, f"dt_rank must be >= 0 (0 = automatic), got {self.dt_rank}")
        _check(self.dt_rank_divisor >= 1, f"dt_rank_divisor must be >= 1, got {self.dt_rank_divisor}")
        _check(0 < self.dt_min <= self.dt_max, f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        _check(self.dt_init_floor > 0, f"dt_init_floor must be > 0, got {self.dt_init_floor}")
        _check(bool(self.scan_backend), "scan_backend must be a non-empty backend name")

    def d_inner(self, dim: int) -> int:
        """Inner width of the SS2D layer for model width ``dim``."""
        return int(self.expand * dim)

    def rank(self, dim: int) -> int:
        """dt_rank for model width ``dim`` (automatic: ceil(dim / dt_rank_divisor))."""
        return self.dt_rank or math.ceil(dim / self.dt_rank_divisor)


@dataclass(frozen=True)
class GuidanceInputConfig:
    """How CLIP guidance enters the blocks (DAM, SAM, CAM; spec 2.5-2.6) and the ablation switches."""

    semantic_dim: int = 512  # width of the semantic tokens E (512 for ViT-B/32)
    use_dam: bool = True  # density-aware logits from the haze-density map
    use_sam: bool = True  # semantic-aware logits from cross-attention to the tokens
    cam_mode: str = "cam"  # "cam": learned softmax blend; "mean": fixed 0.5/0.5; "sum": F_T + F_M
    path: str = "dual"  # "dual": both paths; "attn": window attention only; "ssm": SS2D only
    sam_kernel: int = 3  # kernel of SAM's depth-wise convs (query generation, weight generation)

    def __post_init__(self) -> None:
        _check(self.semantic_dim >= 1, f"semantic_dim must be >= 1, got {self.semantic_dim}")
        _check(self.cam_mode in CAM_MODES, f"cam_mode must be one of {CAM_MODES}, got {self.cam_mode!r}")
        _check(self.path in PATH_MODES, f"path must be one of {PATH_MODES}, got {self.path!r}")
        _check(self.sam_kernel >= 1 and self.sam_kernel % 2 == 1, f"sam_kernel must be odd, got {self.sam_kernel}")


@dataclass(frozen=True)
class ClipHazeConfig:
    """The whole network: a symmetric U-Net of TrambaDA stages (spec 2.1-2.2)."""

    name: str  # variant name, e.g. "cliphaze-s" (recorded in checkpoints)
    stages: tuple[StageConfig, ...]  # encoder, bottleneck, decoder; odd count, mirrored dims
    attention: AttentionConfig = field(default_factory=AttentionConfig)  # Transformer path
    ssm: SSMConfig = field(default_factory=SSMConfig)  # Mamba path
    guidance: GuidanceInputConfig = field(default_factory=GuidanceInputConfig)  # CAM and ablations
    in_chans: int = 3  # image channels (RGB)
    stem_kernel: int = 3  # kernel of the stem and head convs (reflect padding)
    norm_eps: float = 1e-6  # LayerNorm epsilon
    skip_reduction: int = 8  # SKFusion squeeze: hidden = max(C // skip_reduction, skip_min_hidden)
    skip_min_hidden: int = 4  # lower bound of the SKFusion hidden width
    # Not in the paper (ours, docs/model-card.md): a global airlight correction pooled from the bottleneck,
    # Bb += K * a(x), so the airlight is estimated from the whole image instead of per receptive field.
    global_airlight: bool = False
    airlight_hidden: int = 64  # width of the airlight MLP's hidden layer

    def __post_init__(self) -> None:
        if isinstance(self.stages, list):  # accept lists, store an immutable tuple
            object.__setattr__(self, "stages", tuple(self.stages))
        n = len(self.stages)
        _check(n >= 1 and n % 2 == 1, f"need an odd number of stages (encoder, bottleneck, decoder), got {n}")
        for i in range(n // 2):
            a, b = self.stages[i], self.stages[n - 1 - i]
            _check(a.dim == b.dim, f"stage {i} dim {a.dim} must equal its mirror stage {n - 1 - i} dim {b.dim}")
        _check(self.in_chans >= 1, f"in_chans must be >= 1, got {self.in_chans}")
        _check(self.stem_kernel % 2 == 1, f"stem_kernel must be odd, got {self.stem_kernel}")
        _check(self.norm_eps > 0, f"norm_eps must be > 0, got {self.norm_eps}")
        _check(self.skip_reduction >= 1 and self.skip_min_hidden >= 1, "skip_reduction/skip_min_hidden must be >= 1")
        _check(self.airlight_hidden >= 1, f"airlight_hidden must be >= 1, got {self.airlight_hidden}")
        _check(
            self.guidance.path != "ssm" or all(s.use_ssm for s in self.stages),
            "path='ssm' needs use_ssm=True in every stage",
        )

    @property
    def num_scales(self) -> int:
        """Resolutions used (full, 1/2, 1/4, ...)."""
        return len(self.stages) // 2 + 1

    @property
    def pad_multiple(self) -> int:
        """Input sides are padded to a multiple of this (one factor 2 per down-sampling)."""
        return 2 ** (self.num_scales - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able nested dict (stages as a list of dicts)."""
        d = dataclasses.asdict(self)
        d["stages"] = [dict(s) for s in d["stages"]]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipHazeConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        data = dict(data)
        try:
            stages = tuple(StageConfig(**s) for s in data.pop("stages"))
            attention = AttentionConfig(**data.pop("attention", {}))
            ssm = SSMConfig(**data.pop("ssm", {}))
            guidance = GuidanceInputConfig(**data.pop("guidance", {}))
            return cls(stages=stages, attention=attention, ssm=ssm, guidance=guidance, **data)
        except (TypeError, KeyError) as exc:
            raise ConfigError(f"invalid ClipHazeConfig dict: {exc}") from exc

    def replace(self, **changes: Any) -> ClipHazeConfig:
        """A copy with top-level fields replaced (nested configs are replaced whole)."""
        return dataclasses.replace(self, **changes)


def diff_configs(a: ClipHazeConfig, b: ClipHazeConfig, *, ignore: frozenset[str] = RUNTIME_FIELDS) -> list[str]:
    """Dotted names of the fields that differ between two configs, e.g. ``["stages.0.dim"]``."""

    def flatten(value: Any, prefix: str) -> dict[str, Any]:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for k, v in value.items():
                out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
            return out
        if isinstance(value, list):
            out = {f"{prefix}.len": len(value)}
            for i, v in enumerate(value):
                out.update(flatten(v, f"{prefix}.{i}"))
            return out
        return {prefix: value}

    fa, fb = flatten(a.to_dict(), ""), flatten(b.to_dict(), "")
    keys = sorted(set(fa) | set(fb))
    return [k for k in keys if k not in ignore and fa.get(k) != fb.get(k)]


# FFN ratios per stage and the channel layout of the DehazeFormer-style presets (spec 2.2).
_DIMS = (24, 48, 96, 48, 24)
_MLP_RATIOS = (2.0, 4.0, 4.0, 2.0, 2.0)


def _stages(
    dims: tuple[int, ...],
    depths: tuple[int, ...],
    ratios: tuple[float, ...],
    use_ssm: tuple[bool, ...] = (True,) * 5,
) -> tuple[StageConfig, ...]:
    return tuple(
        StageConfig(dim=d, depth=n, mlp_ratio=r, use_ssm=s) for d, n, r, s in zip(dims, depths, ratios, use_ssm)
    )


VARIANTS: dict[str, ClipHazeConfig] = {
    # Test-size network: seconds to build and run on a CPU; small semantic tokens for tiny CLIPs.
    "cliphaze-tiny": ClipHazeConfig(
        name="cliphaze-tiny",
        stages=_stages((8, 16, 32, 16, 8), (1, 1, 1, 1, 1), (2.0, 2.0, 2.0, 2.0, 2.0)),
        attention=AttentionConfig(window_size=4, pos_mlp_hidden=16),
        ssm=SSMConfig(d_state=4),
        guidance=GuidanceInputConfig(semantic_dim=32),
    ),
    # Real-time preset (DehazeFormer-T depths). The SS2D path runs only at 1/2 and 1/4 resolution: at
    # full resolution its four-direction scan touches 4 x d_inner x d_state states per pixel and would
    # dominate the frame time (issue 7), while the window-attention path keeps the fine detail there.
    "cliphaze-t": ClipHazeConfig(
        name="cliphaze-t",
        stages=_stages(_DIMS, (4, 4, 4, 2, 2), _MLP_RATIOS, use_ssm=(False, True, True, True, False)),
    ),
    # Spec default (DehazeFormer-S depths).
    "cliphaze-s": ClipHazeConfig(name="cliphaze-s", stages=_stages(_DIMS, (8, 8, 8, 4, 4), _MLP_RATIOS)),
    # Larger preset (DehazeFormer-B depths).
    "cliphaze-b": ClipHazeConfig(name="cliphaze-b", stages=_stages(_DIMS, (16, 16, 16, 8, 8), _MLP_RATIOS)),
}


def get_config(name: str) -> ClipHazeConfig:
    """Config of a named variant; unknown names raise a ValueError listing the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown CLIPHaze variant {name!r}; known: {', '.join(VARIANTS)}") from None
