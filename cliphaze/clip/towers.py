"""Building open_clip CLIP models by name, by registered JSON config or from an embedded config.

open_clip is imported lazily, only when a model is actually built. Weights come from an open_clip
pretrained tag (open_clip downloads and caches the file on the user's machine), from a local
checkpoint file (``.pt``/``.bin`` read with ``torch.load(weights_only=True)``, or ``.safetensors``), or
nowhere (random init, for tests and for towers embedded in a bundle). Local files go through
``open_clip.load_checkpoint``: the same path a real checkpoint takes (``state_dict`` unwrapping,
``module.`` stripping, position-embedding resizing, strict load).

A :class:`ClipIdentity` names the weights a model carries (architecture, config hash, weights source and
a content fingerprint), so learned prompts can refuse to run on a different CLIP.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cliphaze.clip.errors import ClipLoadError, ClipUnavailable, UnsupportedTowerError

if TYPE_CHECKING:
    from types import ModuleType

    from torch import nn

logger = logging.getLogger(__name__)

# Small open_clip configs shipped with the package (tests, tiny shipped models, DA-CLIP's architecture).
SHIPPED_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
# Hex digits kept of the SHA-256 config hash and weights fingerprint (64 bits: collisions are not a concern).
HASH_HEX_DIGITS = 16
# Prefix of the pretrained label of a local checkpoint file.
FILE_LABEL_PREFIX = "file:"
# Label of randomly initialised weights (a tower embedded in a bundle is identified by its fingerprint).
RANDOM_LABEL = "random-init"

_INSTALL_HINT = "pip install 'open_clip_torch>=2.24'"
_shipped_registered = False


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP to build and where its weights come from."""

    model_name: str = "ViT-B-32"  # open_clip architecture name, or the stem of a registered JSON config
    pretrained: str | None = None  # open_clip pretrained tag (downloaded) or local checkpoint path; None = random
    model_config_json: str | None = None  # full open_clip model config (JSON); set = no registry lookup needed

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "pretrained": self.pretrained,
            "model_config_json": self.model_config_json,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipSpec:
        return cls(
            model_name=str(data["model_name"]),
            pretrained=data.get("pretrained"),
            model_config_json=data.get("model_config_json"),
        )


@dataclass(frozen=True)
class ClipIdentity:
    """What CLIP a set of weights is: prompts and bundles record it and check it on load."""

    model_name: str  # architecture name as given by the user
    config_hash: str  # truncated SHA-256 of the canonical JSON model config
    pretrained: str  # pretrained tag, "file:<name>", "daclip:<name>" or "random-init" (informative)
    weights_hash: str  # truncated SHA-256 of the projection / final-norm tensors (content fingerprint)

    def to_dict(self) -> dict[str, str]:
        return {
            "model_name": self.model_name,
            "config_hash": self.config_hash,
            "pretrained": self.pretrained,
            "weights_hash": self.weights_hash,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipIdentity:
        return cls(**{k: str(data[k]) for k in ("model_name", "config_hash", "pretrained", "weights_hash")})

    def matches(self, other: ClipIdentity) -> bool:
        """Same architecture and same weights (names and tags may differ)."""
        return self.config_hash == other.config_hash and self.weights_hash == other.weights_hash

    def describe(self) -> str:
        return f"{self.model_name} ({self.pretrained}, config {self.config_hash}, weights {self.weights_hash})"


@dataclass
class LoadedClip:
    """A built CLIP model, its resolved config and its identity."""

    model: nn.Module  # open_clip CLIP / CustomTextCLIP, eval mode, frozen
    config: dict[str, Any]  # resolved open_clip model config
    identity: ClipIdentity  # what weights it carries


def import_open_clip() -> ModuleType:
    """Import open_clip or raise :class:`ClipUnavailable` with the install command."""
    try:
        import open_clip
    except ImportError as err:
        raise ClipUnavailable(f"CLIP guidance needs open_clip: {_INSTALL_HINT}") from err
    return open_clip


def register_model_config(path: str | os.PathLike[str]) -> list[str]:
    """Register open_clip model config JSON file(s) (a file or a folder of them) by file stem.

    Returns:
        The config names now available from ``path``.
    """
    open_clip = import_open_clip()
    path = Path(path)
    if not path.exists():
        raise ClipLoadError(f"open_clip model config {path} does not exist")
    open_clip.add_model_config(path)
    files = [path] if path.is_file() else sorted(path.glob("*.json"))
    return [f.stem for f in files]


def _ensure_shipped_configs() -> None:
    global _shipped_registered  # one-time registration of package data, idempotent
    if not _shipped_registered:
        register_model_config(SHIPPED_CONFIG_DIR)
        _shipped_registered = True


def resolve_model_config(spec: ClipSpec) -> dict[str, Any]:
    """The open_clip model config dict for ``spec`` (embedded JSON first, then the registry)."""
    if spec.model_config_json is not None:
        try:
            config = json.loads(spec.model_config_json)
        except json.JSONDecodeError as err:
            raise ClipLoadError(f"embedded open_clip config of {spec.model_name!r} is not valid JSON: {err}") from err
        return dict(config)
    open_clip = import_open_clip()
    _ensure_shipped_configs()
    config = open_clip.get_model_config(spec.model_name.replace("/", "-"))
    if config is None:
        raise ClipLoadError(
            f"unknown open_clip model {spec.model_name!r}; register its JSON config or pick one of "
            f"{', '.join(open_clip.list_models()[:12])}, ..."
        )
    return dict(config)


def is_builtin_config(spec: ClipSpec) -> bool:
    """True when open_clip itself ships the config (no need to embed it in a bundle)."""
    if spec.model_config_json is not None:
        return False
    open_clip = import_open_clip()
    builtin_dir = Path(open_clip.__file__).resolve().parent / "model_configs"
    return (builtin_dir / f"{spec.model_name.replace('/', '-')}.json").is_file()


def config_hash(config: dict[str, Any]) -> str:
    """Truncated SHA-256 of the canonical JSON of an open_clip model config."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_HEX_DIGITS]


def weights_fingerprint(model: nn.Module) -> str:
    """Truncated SHA-256 of the tensors that define the joint embedding space (cheap, content based)."""
    text = getattr(model, "text", model)
    parts = [model.visual.proj, model.visual.ln_post.weight, text.ln_final.weight]
    projection = text.text_projection
    parts.append(projection.weight if isinstance(projection, torch.nn.Linear) else projection)
    digest = hashlib.sha256()
    for tensor in parts:
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:HASH_HEX_DIGITS]


def build_clip(config: dict[str, Any]) -> nn.Module:
    """Random-init fp32 CLIP from an open_clip model config dict (no weights loaded)."""
    import_open_clip()
    from open_clip.model import CLIP, CustomTextCLIP

    config = dict(config)
    if "hf_model_name" in config.get("text_cfg", {}):
        raise UnsupportedTowerError(
            "guidance needs an open_clip text transformer; Hugging Face text towers are unsupported"
        )
    if "multimodal_cfg" in config:
        raise UnsupportedTowerError("guidance does not support CoCa models")
    model_class = CustomTextCLIP if config.pop("custom_text", False) else CLIP
    try:
        model = model_class(**config)
    except (TypeError, ValueError, AssertionError) as err:
        raise ClipLoadError(f"invalid open_clip model config: {err}") from err
    return model


def _resolve_weights(spec: ClipSpec, config: dict[str, Any]) -> tuple[str | None, str]:
    """(local checkpoint path or None, pretrained label) for ``spec.pretrained``."""
    if spec.pretrained is None:
        return None, RANDOM_LABEL
    if os.path.isfile(spec.pretrained):
        return spec.pretrained, FILE_LABEL_PREFIX + Path(spec.pretrained).name
    open_clip = import_open_clip()
    tag_cfg = open_clip.get_pretrained_cfg(spec.model_name.replace("/", "-"), spec.pretrained)
    if not tag_cfg:
        raise ClipLoadError(
            f"{spec.pretrained!r} is neither a local file nor a pretrained tag of {spec.model_name!r} "
            f"(tags: {', '.join(open_clip.list_pretrained_tags_by_model(spec.model_name)) or 'none'})"
        )
    if tag_cfg.get("quick_gelu", False) and not config.get("quick_gelu", False):
        logger.info("pretrained tag %s was trained with QuickGELU; building %s with it",
                    spec.pretrained, spec.model_name)
        config["quick_gelu"] = True
    try:
        path = open_clip.download_pretrained(tag_cfg)
    except (OSError, RuntimeError, ValueError) as err:  # network / hub / cache errors, re-raised typed
        raise ClipLoadError(f"could not download CLIP weights {spec.model_name}/{spec.pretrained}: {err}") from err
    if not path:
        raise ClipLoadError(f"no download source for CLIP weights {spec.model_name}/{spec.pretrained}")
    return path, spec.pretrained


def load_clip_weights(model: nn.Module, path: str) -> None:
    """Load a local open_clip checkpoint strictly through ``open_clip.load_checkpoint`` (weights_only)."""
    import pickle

    open_clip = import_open_clip()
    try:
        open_clip.load_checkpoint(model, path, strict=True, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ClipLoadError(
            f"refused to load {path}: it is not a plain weights file (torch.load weights_only=True failed: "
            f"{str(err).splitlines()[0]})"
        ) from err
    except RuntimeError as err:
        first = " ".join(str(err).split())[:400]
        raise ClipLoadError(f"CLIP weights {path} do not fit the model: {first}") from err


def create_clip(
    spec: ClipSpec, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> LoadedClip:
    """Build the CLIP of ``spec``, load its weights, freeze it and put it in eval mode on ``device``."""
    config = resolve_model_config(spec)
    path, label = _resolve_weights(spec, config)
    model = build_clip(config)
    if path is not None:
        logger.info("loading CLIP %s weights from %s", spec.model_name, path)
        load_clip_weights(model, path)
    identity = ClipIdentity(
        model_name=spec.model_name,
        config_hash=config_hash(config),
        pretrained=label,
        weights_hash=weights_fingerprint(model),
    )
    freeze(model)
    model.to(device=device, dtype=dtype)
    return LoadedClip(model=model, config=config, identity=identity)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no gradients."""
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module
