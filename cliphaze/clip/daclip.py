"""DA-CLIP (Luo et al., daclip-uir) rebuilt on upstream open_clip, loading the official checkpoint strictly.

Structure (spec 5.1): the frozen base CLIP (``clip``), a deep copy of its image tower (``visual_control``,
the controller) and one zero-initialised ``Linear(W, W)`` with bias per block (``zero_modules``). The
controller pass collects ``h_i = zero_i(block_i(x))``; the controlled pass through the frozen tower adds
them back in REVERSED order (``x = x + hiddens.pop()`` after each block). ``encode_image`` returns
``(content_features, degradation_features)`` like the official ``DaCLIP.encode_image``.

Official key layout (spec 5.2) -> this module:

* ``clip.*`` -> ``clip.*``; ``logit_scale`` -> ``logit_scale``
* ``visual_control.transformer.transformer.*`` -> ``visual_control.transformer.*``
* ``visual_control.transformer.zero_modules.{i}.*`` -> ``zero_modules.{i}.*``
* other ``visual_control.*`` -> ``visual_control.*``
* ``visual.*``: the same module as ``clip.visual`` registered twice; checked equal to ``clip.visual.*``, dropped.

Containers: a raw state dict, ``{"state_dict": ...}`` (DA-CLIP training checkpoints) and ``module.``
prefixes (DDP) are all accepted. ``.pt``/``.pth``/``.bin`` files are read with
``torch.load(weights_only=True)`` only; ``.safetensors`` files with safetensors.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cliphaze.clip import vit
from cliphaze.clip.errors import CheckpointFormatError, StateDictMismatchError
from cliphaze.clip.towers import ClipIdentity, ClipSpec, build_clip, config_hash, freeze, resolve_model_config
from cliphaze.clip.towers import weights_fingerprint

logger = logging.getLogger(__name__)

# Key prefixes of the official DaCLIP state dict.
CLIP_PREFIX = "clip."
DUPLICATE_VISUAL_PREFIX = "visual."
CONTROL_PREFIX = "visual_control."
CONTROL_BLOCKS_PREFIX = "visual_control.transformer.transformer."
CONTROL_ZERO_PREFIX = "visual_control.transformer.zero_modules."
DDP_PREFIX = "module."
# How many offending key names an error message lists per category before "(+n more)".
MAX_KEYS_IN_ERROR = 6
SAFETENSORS_SUFFIX = ".safetensors"


def _zero_linear(width: int) -> nn.Linear:
    layer = nn.Linear(width, width, bias=True)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class DaClip(nn.Module):
    """DA-CLIP: base CLIP + controller copy of its image tower + zero Linear injections."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        vit.check_vision_tower(clip.visual)
        self.clip = clip
        self.visual_control = copy.deepcopy(clip.visual)
        width = clip.visual.conv1.out_channels
        num_layers = len(clip.visual.transformer.resblocks)
        self.zero_modules = nn.ModuleList(_zero_linear(width) for _ in range(num_layers))
        self.logit_scale = nn.Parameter(clip.logit_scale.detach().clone())
        self.identity: ClipIdentity | None = None  # base CLIP identity, set when weights are loaded
        self.model_config: dict[str, Any] | None = None  # resolved open_clip config of the base CLIP

    def _controller(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Controller pass: degradation features (B, D) and the per-block hiddens [h_0 .. h_{L-1}]."""
        x, hiddens = vit.run_blocks(self.visual_control, vit.embed(self.visual_control, images),
                                    zero_modules=self.zero_modules)
        return vit.pool(self.visual_control, x), hiddens

    def _controlled_blocks(self, images: torch.Tensor, hiddens: list[torch.Tensor]) -> torch.Tensor:
        """Frozen tower with the hiddens added in reversed order; consumes ``hiddens``. (B, L, W)."""
        visual = self.clip.visual
        x, _ = vit.run_blocks(visual, vit.embed(visual, images), control=hiddens)
        return x

    def encode_image(
        self, images: torch.Tensor, control: bool = True, normalize: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """Official ``DaCLIP.encode_image``.

        Args:
            images: (B, 3, H, W) CLIP-normalised images.
            control: False gives the plain ``clip.encode_image`` (a single (B, D) tensor).
            normalize: L2-normalise the outputs.

        Returns:
            ``(content_features, degradation_features)``, each (B, D).
        """
        if not control:
            return self.clip.encode_image(images, normalize=normalize)
        degradation, hiddens = self._controller(images)
        content = vit.pool(self.clip.visual, self._controlled_blocks(images, hiddens))
        if normalize:
            content, degradation = F.normalize(content, dim=-1), F.normalize(degradation, dim=-1)
        return content, degradation

    def encode_content_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """SAM tokens E: all output tokens of the controlled pass after ``ln_post`` and ``proj``.

        Args:
            images: (B, 3, H, W) CLIP-normalised images.

        Returns:
            (B, 1 + gh * gw, D); (B, 50, 512) for ViT-B/32 at 224 px. Token 0 pooled equals the content
            features of :meth:`encode_image`.
        """
        _, hiddens = self._controller(images)
        x = self._controlled_blocks(images, hiddens)
        return vit.project_tokens(self.clip.visual, x)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from ``{"state_dict": ...}`` and stripped of ``module.``.

    ``.safetensors`` is read with safetensors; anything else with ``torch.load(weights_only=True)``, which
    refuses pickled code instead of running it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"checkpoint {path} does not exist")
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise CheckpointFormatError(f"cannot read safetensors checkpoint {path}: {err}") from err
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            reason = str(err).splitlines()[0]
            raise CheckpointFormatError(
                f"refused to load {path}: it is not a plain weights file (weights_only=True: {reason})"
            ) from err
        except (RuntimeError, OSError, EOFError) as err:
            raise CheckpointFormatError(f"cannot read checkpoint {path}: {err}") from err
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointFormatError(f"checkpoint {path} does not hold a state dict of tensors")
    return {(k[len(DDP_PREFIX):] if k.startswith(DDP_PREFIX) else k): v for k, v in obj.items()}


def _list(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_IN_ERROR])
    more = len(keys) - MAX_KEYS_IN_ERROR
    return f"{shown} (+{more} more)" if more > 0 else shown


def official_to_local(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Map official DaCLIP keys to :class:`DaClip` keys.

    Returns:
        (mapped state dict, local key -> official key, ``visual.*`` duplicate keys found).
    """
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    duplicates: list[str] = []
    for key, value in state_dict.items():
        if key.startswith(DUPLICATE_VISUAL_PREFIX):
            duplicates.append(key)
            continue
        if key.startswith(CONTROL_BLOCKS_PREFIX):
            local = "visual_control.transformer." + key[len(CONTROL_BLOCKS_PREFIX):]
        elif key.startswith(CONTROL_ZERO_PREFIX):
            local = "zero_modules." + key[len(CONTROL_ZERO_PREFIX):]
        elif key.startswith("visual_control.transformer."):
            local = "unexpected:" + key  # the controller's transformer only holds .transformer and .zero_modules
        else:
            local = key
        mapped[local] = value
        origin[local] = key
    return mapped, origin, duplicates


def local_to_official(key: str) -> str:
    """Official DaCLIP key of a :class:`DaClip` key (for error messages and exports)."""
    if key.startswith("zero_modules."):
        return CONTROL_ZERO_PREFIX + key[len("zero_modules."):]
    if key.startswith("visual_control.transformer."):
        return CONTROL_BLOCKS_PREFIX + key[len("visual_control.transformer."):]
    return key


def to_official_state_dict(model: DaClip) -> dict[str, torch.Tensor]:
    """The official key layout of ``model`` (including the ``visual.*`` duplicates)."""
    out = {local_to_official(k): v for k, v in model.state_dict().items()}
    for key in [k for k in out if k.startswith(CLIP_PREFIX + "visual.")]:
        out[key[len(CLIP_PREFIX):]] = out[key]
    return out


def load_official_state_dict(model: DaClip, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load an official-layout state dict; one :class:`StateDictMismatchError` names every problem."""
    mapped, origin, duplicates = official_to_local(state_dict)
    expected = model.state_dict()
    missing = sorted(local_to_official(k) for k in expected if k not in mapped)
    unexpected = sorted(origin[k] for k in mapped if k not in expected)
    misshaped = sorted(
        f"{origin[k]} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in mapped.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    )
    visual_keys = {CLIP_PREFIX + k for k in duplicates}
    clip_visual = {k for k in mapped if k.startswith(CLIP_PREFIX + "visual.")}
    if duplicates:
        unexpected += sorted(k[len(CLIP_PREFIX):] for k in visual_keys - clip_visual)
        missing += sorted(k[len(CLIP_PREFIX):] for k in clip_visual - visual_keys)
    problems = []
    if missing:
        problems.append(f"missing keys: {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_list(sorted(unexpected))}")
    if misshaped:
        problems.append(f"mis-shaped keys (file vs model): {_list(misshaped)}")
    if problems:
        raise StateDictMismatchError(f"DA-CLIP checkpoint {source} does not match the model: " + "; ".join(problems))
    differing = sorted(k for k in duplicates if not torch.equal(state_dict[k], mapped[CLIP_PREFIX + k]))
    if differing:
        raise StateDictMismatchError(
            f"DA-CLIP checkpoint {source}: visual.* duplicates differ from clip.visual.*: {_list(differing)}"
        )
    model.load_state_dict(mapped, strict=True)


def create_daclip(
    model_name: str = "ViT-B-32", *, model_config_json: str | None = None
) -> tuple[DaClip, dict[str, Any]]:
    """Random-init DA-CLIP of an open_clip architecture (zero modules zero) and its resolved config."""
    config = resolve_model_config(ClipSpec(model_name=model_name, model_config_json=model_config_json))
    model = DaClip(build_clip(config))
    model.model_config = config
    return model, config


def load_daclip(
    checkpoint: str | os.PathLike[str],
    model_name: str = "ViT-B-32",
    *,
    model_config_json: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DaClip:
    """Build DA-CLIP on upstream open_clip and load an official checkpoint strictly.

    Args:
        checkpoint: ``daclip_ViT-B-32.pt`` (raw, ``state_dict``-wrapped or ``module.``-prefixed) or safetensors.
        model_name: open_clip architecture of the base CLIP (any name, including registered JSON configs).
        model_config_json: an embedded open_clip config instead of a registry lookup.

    Returns:
        Frozen, eval-mode :class:`DaClip` on ``device``; ``.identity`` names its base CLIP.
    """
    model, config = create_daclip(model_name, model_config_json=model_config_json)
    load_official_state_dict(model, read_checkpoint(checkpoint), str(checkpoint))
    logger.info("loaded DA-CLIP %s from %s", model_name, checkpoint)
    model.identity = ClipIdentity(
        model_name=model_name,
        config_hash=config_hash(config),
        pretrained="daclip:" + Path(checkpoint).name,
        weights_hash=weights_fingerprint(model.clip),
    )
    model.model_config = config
    freeze(model)
    return model.to(device=device, dtype=dtype)
