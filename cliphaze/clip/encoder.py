"""GuidanceEncoder: frames -> :class:`~cliphaze.guidance_types.Guidance` (density map M, semantic tokens E).

A plain facade (not an ``nn.Module``) over the frozen towers:

* M (N, 1, gh, gw) in [0, 1]: the plain CLIP's patch features vs the learned hazy/clear prompts (spec 2.5);
* E (N, T, D): all output tokens of DA-CLIP's controlled pass after ``ln_post``/``proj`` (spec 2.6.1), or,
  without a DA-CLIP checkpoint, the plain CLIP's output tokens (same shape, no degradation removal).

Frames are squash-resized to ``input_size_px`` (no centre crop, spec 2.4.1) with
:func:`cliphaze.preprocess.to_clip_input`; inputs other than the tower's trained size use resampled
position embeddings, giving a finer density grid (e.g. 10x10 at 336 px for ViT-B/32).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from cliphaze.clip import vit
from cliphaze.clip.density import DENSITY_TEMPERATURE, density_from_features
from cliphaze.clip.errors import ClipLoadError, PromptError
from cliphaze.clip.prompts import PromptSet, load_prompts
from cliphaze.clip.towers import ClipIdentity, ClipSpec, LoadedClip, create_clip
from cliphaze.guidance_types import Guidance
from cliphaze.preprocess import frames_to_unit, to_clip_input
from cliphaze.run_options import PRECISION_DTYPE_NAMES

if TYPE_CHECKING:
    from cliphaze.clip.daclip import DaClip

logger = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype] = {name: getattr(torch, dtype) for name, dtype in PRECISION_DTYPE_NAMES.items()}
# The paper configuration: open_clip ViT-B/32 trained on LAION-2B, plus the official DA-CLIP checkpoint.
PAPER_CLIP = ClipSpec(model_name="ViT-B-32", pretrained="laion2b_s34b_b79k")
PAPER_DACLIP_CHECKPOINT = "daclip_ViT-B-32.pt"


def get_dtype(precision: str) -> torch.dtype:
    """torch dtype of a precision name ("fp32", "bf16", "fp16")."""
    try:
        return PRECISIONS[precision]
    except KeyError as err:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}") from err


@dataclass(frozen=True)
class GuidanceConfig:
    """Which towers produce the guidance and how."""

    clip: ClipSpec = field(default_factory=lambda: PAPER_CLIP)  # plain CLIP: density map (and fallback tokens)
    daclip_checkpoint: str | None = None  # official DA-CLIP file (.pt / .safetensors); None = no DA-CLIP
    daclip_model: str | None = None  # open_clip architecture of DA-CLIP's base CLIP; None = clip.model_name
    input_size_px: int = 224  # side of the square CLIP input (frames are squash-resized to it)
    use_density: bool = True  # compute the density map M (needs learned prompts)
    use_tokens: bool = True  # compute the semantic tokens E
    density_temperature: float = DENSITY_TEMPERATURE  # tau of sigmoid(tau * (<p,t_h> - <p,t_c>))
    batch_size: int = 32  # frames per tower forward (bounds activation memory)

    def __post_init__(self) -> None:
        if self.input_size_px <= 0 or self.batch_size <= 0:
            raise ValueError("input_size_px and batch_size must be positive")
        if self.density_temperature <= 0:
            raise ValueError(f"density_temperature must be > 0, got {self.density_temperature}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "clip": self.clip.to_dict(),
            "daclip_checkpoint": self.daclip_checkpoint,
            "daclip_model": self.daclip_model,
            "input_size_px": self.input_size_px,
            "use_density": self.use_density,
            "use_tokens": self.use_tokens,
            "density_temperature": self.density_temperature,
            "batch_size": self.batch_size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuidanceConfig:
        data = dict(data)
        data["clip"] = ClipSpec.from_dict(data["clip"])
        return cls(**data)


class GuidanceEncoder:
    """Frozen CLIP / DA-CLIP towers plus learned prompts, turning frames into :class:`Guidance`."""

    def __init__(
        self,
        config: GuidanceConfig,
        clip: LoadedClip,
        *,
        daclip: DaClip | None = None,
        prompts: PromptSet | None = None,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
    ) -> None:
        """Assemble from loaded parts (see :meth:`from_config` to load by names and paths).

        Args:
            clip: the plain CLIP (density map; tokens when ``daclip`` is None).
            daclip: DA-CLIP for the semantic tokens; its base CLIP may be ``clip.model`` itself.
            prompts: learned prompts; required when ``config.use_density``; must match ``clip``.

        The towers are moved to ``device`` / ``precision`` in place (share a LoadedClip between encoders
        only when they run with the same device and precision).
        """
        vit.check_vision_tower(clip.model.visual)
        if config.use_density:
            if prompts is None:
                raise PromptError("use_density needs learned prompts (cliphaze.clip.train_prompts or a prompts file)")
            prompts.check_matches(clip.identity)
        if config.use_tokens and daclip is not None and daclip.clip.visual.proj.shape != clip.model.visual.proj.shape:
            raise ClipLoadError("DA-CLIP and the plain CLIP have different image-tower shapes")
        self.config = config
        self.clip = clip
        self.daclip = daclip
        self.prompts = prompts
        self.device = torch.device(device)
        self.precision = precision
        self.dtype = get_dtype(precision)
        for module in (clip.model, daclip):
            if module is not None:
                module.to(device=self.device, dtype=self.dtype)
        self._text_features = None if prompts is None else prompts.text_features.to(self.device, torch.float32)

    @classmethod
    def from_config(
        cls,
        config: GuidanceConfig,
        *,
        prompts: PromptSet | str | os.PathLike[str] | None = None,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
    ) -> GuidanceEncoder:
        """Load the towers named by ``config`` (tags are downloaded by open_clip) and the prompts."""
        from cliphaze.clip.daclip import load_daclip

        daclip = None
        if config.daclip_checkpoint is not None and config.use_tokens:
            daclip = load_daclip(
                config.daclip_checkpoint,
                config.daclip_model or config.clip.model_name,
                model_config_json=config.clip.model_config_json if config.daclip_model is None else None,
            )
        if daclip is not None and config.clip.pretrained is None:
            clip = LoadedClip(model=daclip.clip, config=daclip.model_config or {}, identity=daclip.identity)
        else:
            clip = create_clip(config.clip)
            if daclip is not None and share_base(clip, daclip):
                clip = LoadedClip(model=daclip.clip, config=clip.config, identity=clip.identity)
        if prompts is not None and not isinstance(prompts, PromptSet):
            prompts = load_prompts(prompts, expected=clip.identity)
        return cls(config, clip, daclip=daclip, prompts=prompts, device=device, precision=precision)

    @property
    def identity(self) -> ClipIdentity:
        return self.clip.identity

    @property
    def token_dim(self) -> int:
        """D of the semantic tokens (and of the joint space)."""
        return int(self.clip.model.visual.proj.shape[1])

    def grid(self) -> tuple[int, int]:
        """Patch grid (gh, gw) of the density map and the token count T = 1 + gh * gw."""
        return vit.grid_size(self.clip.model.visual, self.config.input_size_px, self.config.input_size_px)

    def _to_unit(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dtype == torch.uint8:
            return frames_to_unit(frames)
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"float frames must be (N, 3, H, W) in [0, 1], got {tuple(frames.shape)}")
        return frames.float()

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> Guidance:
        """Guidance of a batch of frames.

        Args:
            frames: (N, H, W, 3) uint8 RGB or (N, 3, H, W) float in [0, 1]; any size.

        Returns:
            Guidance with density (N, 1, gh, gw) in [0, 1] and tokens (N, T, D), in the encoder's precision,
            on the frames' device; fields switched off in the config are None.
        """
        if frames.shape[0] == 0:
            raise ValueError("cannot encode guidance for an empty batch")
        size = self.config.input_size_px
        densities: list[torch.Tensor] = []
        tokens: list[torch.Tensor] = []
        for chunk in frames.split(self.config.batch_size):
            unit = self._to_unit(chunk.to(self.device))
            clip_input = to_clip_input(unit, size).to(self.dtype)
            plain = None
            if self.config.use_density or (self.config.use_tokens and self.daclip is None):
                plain = vit.encode_tokens(self.clip.model.visual, clip_input)  # (B, L, D)
            if self.config.use_density:
                assert plain is not None and self._text_features is not None
                gh, gw = vit.grid_size(self.clip.model.visual, size, size)
                patches = F.normalize(plain[:, vit.NUM_PREFIX_TOKENS:].float(), dim=-1)
                patches = patches.reshape(-1, gh, gw, plain.shape[-1])
                densities.append(density_from_features(patches, self._text_features, self.config.density_temperature))
            if self.config.use_tokens:
                tokens.append(plain if self.daclip is None else self.daclip.encode_content_tokens(clip_input))
        out_device = frames.device
        return Guidance(
            density=torch.cat(densities).to(out_device, self.dtype) if densities else None,
            tokens=torch.cat(tokens).to(out_device, self.dtype) if tokens else None,
        )

    __call__ = encode

    def describe(self) -> str:
        towers = f"CLIP {self.identity.describe()}"
        if self.daclip is not None and self.daclip.identity is not None:
            towers += f" + DA-CLIP {self.daclip.identity.pretrained}"
        return f"{towers} @ {self.config.input_size_px}px, {self.precision}"


def share_base(clip: LoadedClip, daclip: DaClip) -> bool:
    """True when the plain CLIP equals DA-CLIP's frozen base (spec 2.4.2), so one copy can serve both."""
    if daclip.identity is None or not daclip.identity.matches(clip.identity):
        return False
    theirs = daclip.clip.state_dict()
    same = all(torch.equal(v, theirs[k]) for k, v in clip.model.state_dict().items())
    if same:
        logger.info("plain CLIP equals DA-CLIP's base CLIP; sharing one copy")
    return same
