"""One safetensors file holding everything a CLIPHaze Dehazer needs.

Tensors (by prefix):

* ``net.``     the ClipHazeNet weights;
* ``prompts.`` learned prompt embeddings, EOT indices and text features;
* ``clip.``    (optional) the plain CLIP towers, open_clip key layout;
* ``daclip.``  (optional) DA-CLIP; when its base CLIP is the plain CLIP, only ``visual_control.*``,
  ``zero_modules.*`` and ``logit_scale`` are stored.

Metadata: ``format_version``, ``kind`` = "cliphaze-bundle", ``net_config`` (JSON), ``guidance_config`` (JSON;
a custom open_clip config is embedded so loading needs no registry), ``towers`` ("embedded" or
"referenced"), the CLIP identities, and the prompts' metadata. Referenced towers (the paper configuration:
ViT-B-32 ``laion2b_s34b_b79k`` + ``daclip_ViT-B-32.pt``) are loaded by name / path at load time; their
identity must match the one recorded, so prompts never run on another CLIP.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cliphaze.checkpoint import CheckpointError, read_safetensors, write_safetensors

if TYPE_CHECKING:
    from cliphaze.clip.encoder import GuidanceConfig, GuidanceEncoder
    from cliphaze.model import ClipHazeNet

logger = logging.getLogger(__name__)

BUNDLE_KIND = "cliphaze-bundle"
BUNDLE_FORMAT_VERSION = "1"
NET_PREFIX = "net."
PROMPTS_PREFIX = "prompts."
CLIP_PREFIX = "clip."
DACLIP_PREFIX = "daclip."
# DaClip sub-module names stored under ``daclip.`` when the base CLIP is shared with ``clip.``.
DACLIP_OWN_PREFIXES = ("visual_control.", "zero_modules.", "logit_scale")
TOWERS_EMBEDDED = "embedded"
TOWERS_REFERENCED = "referenced"
NAMES_SHOWN = 5  # offending key names listed in an error message


class BundleError(CheckpointError):
    """A bundle is unreadable, inconsistent or does not fit the code that loads it."""


@dataclass
class LoadedBundle:
    """The parts of a bundle, ready to assemble into a Dehazer."""

    net: ClipHazeNet  # the network (CPU, float32, eval mode)
    encoder: GuidanceEncoder | None  # guidance towers + prompts (None when the net uses no guidance)
    metadata: dict[str, str]  # raw string metadata of the file


def _names(keys: list[str]) -> str:
    more = len(keys) - NAMES_SHOWN
    return ", ".join(keys[:NAMES_SHOWN]) + (f" (+{more} more)" if more > 0 else "")


def _fp32(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Prefixed copy with floating tensors in float32 (towers may run in bf16/fp16; files stay exact fp32)."""
    return {prefix + k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    problems = [f"{label}: {_names(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped)) if keys]
    if problems:
        raise BundleError(f"{path}: {what} weights do not fit: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def _portable_guidance_config(config: GuidanceConfig, encoder: GuidanceEncoder) -> dict[str, Any]:
    """Guidance config dict with the open_clip model config embedded when it is not an open_clip built-in."""
    from cliphaze.clip.towers import is_builtin_config

    clip = config.clip
    if not is_builtin_config(clip):
        clip = dataclasses.replace(clip, model_config_json=json.dumps(encoder.clip.config, sort_keys=True))
    return dataclasses.replace(config, clip=clip).to_dict()


def save_bundle(
    path: str | os.PathLike[str],
    net: ClipHazeNet,
    guidance_encoder: GuidanceEncoder | None,
    *,
    embed_towers: bool = False,
    extra_metadata: dict[str, str] | None = None,
    net_dtype: torch.dtype = torch.float32,
) -> None:
    """Write a bundle (atomically).

    Args:
        net: the trained network.
        guidance_encoder: its guidance towers and prompts (None for a guidance-free net).
        embed_towers: store the CLIP / DA-CLIP weights in the file (small shipped models); otherwise the
            towers are referenced by model name + pretrained tag / path, which must then be set.
        extra_metadata: more string metadata (e.g. training provenance).
        net_dtype: storage type of the network's floating tensors: ``torch.bfloat16`` halves the file (a GPU
            run's output must fit 16 MiB); :func:`load_bundle` reads either into the float32 network.
    """
    tensors = {k: v.to(net_dtype) if v.is_floating_point() else v
               for k, v in _fp32(net.state_dict(), NET_PREFIX).items()}
    metadata: dict[str, str] = dict(extra_metadata or {})
    metadata.update(
        format_version=BUNDLE_FORMAT_VERSION,
        kind=BUNDLE_KIND,
        net_config=json.dumps(net.config.to_dict(), sort_keys=True),
        net_dtype=str(net_dtype).removeprefix("torch."),
    )
    if guidance_encoder is not None:
        enc = guidance_encoder
        metadata["guidance_config"] = json.dumps(_portable_guidance_config(enc.config, enc), sort_keys=True)
        metadata["clip_identity"] = json.dumps(enc.identity.to_dict())
        if enc.prompts is not None:
            tensors.update(enc.prompts.to_tensors(PROMPTS_PREFIX))
            metadata["prompts"] = json.dumps(enc.prompts.metadata(), sort_keys=True)
        shared = enc.daclip is not None and enc.daclip.clip is enc.clip.model
        if embed_towers:
            if enc.dtype != torch.float32:
                raise BundleError("embed towers from an fp32 guidance encoder (its weights are stored exactly)")
            tensors.update(_fp32(enc.clip.model.state_dict(), CLIP_PREFIX))
            if enc.daclip is not None:
                own = {k: v for k, v in enc.daclip.state_dict().items()
                       if not shared or k.startswith(DACLIP_OWN_PREFIXES)}
                tensors.update(_fp32(own, DACLIP_PREFIX))
                metadata["daclip_shares_clip"] = json.dumps(shared)
        else:
            if enc.config.clip.pretrained is None and not (enc.daclip is not None and shared):
                raise BundleError("the CLIP towers are random-init and cannot be referenced; use embed_towers=True")
        if enc.daclip is not None and enc.daclip.identity is not None:
            metadata["daclip_identity"] = json.dumps(enc.daclip.identity.to_dict())
        metadata["towers"] = TOWERS_EMBEDDED if embed_towers else TOWERS_REFERENCED
    write_safetensors(path, tensors, metadata)
    logger.info("saved bundle %s (%d tensors, towers %s)", path, len(tensors), metadata.get("towers", "none"))


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors, metadata = read_safetensors(path)
    if metadata.get("kind") != BUNDLE_KIND:
        raise BundleError(f"{path}: metadata kind is {metadata.get('kind')!r}, not a {BUNDLE_KIND!r} file")
    if metadata.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{path}: unknown bundle format_version {metadata.get('format_version')!r} (reads {BUNDLE_FORMAT_VERSION})"
        )
    return tensors, metadata


def _load_net(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], scan_backend: str | None):
    from cliphaze.config import ClipHazeConfig, ConfigError
    from cliphaze.factory import create_model

    try:
        config = ClipHazeConfig.from_dict(json.loads(metadata["net_config"]))
    except (KeyError, ValueError, ConfigError) as err:
        raise BundleError(f"{path}: invalid net_config in metadata ({err})") from err
    net = create_model(config, scan_backend=scan_backend)
    _load_strict(net, _strip(tensors, NET_PREFIX), "network", path)
    return net.eval()


def _embedded_encoder(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], config: GuidanceConfig,
                      prompts: Any, device: torch.device | str, precision: str) -> GuidanceEncoder:
    from cliphaze.clip.daclip import DaClip
    from cliphaze.clip.encoder import GuidanceEncoder
    from cliphaze.clip.towers import ClipIdentity, LoadedClip, build_clip, freeze, resolve_model_config

    model_config = resolve_model_config(config.clip)
    model = build_clip(model_config)
    _load_strict(model, _strip(tensors, CLIP_PREFIX), "CLIP", path)
    identity = ClipIdentity.from_dict(json.loads(metadata["clip_identity"]))
    clip = LoadedClip(model=freeze(model), config=model_config, identity=identity)
    daclip = None
    daclip_state = _strip(tensors, DACLIP_PREFIX)
    if daclip_state:
        shared = json.loads(metadata.get("daclip_shares_clip", "false"))
        daclip = DaClip(model if shared else build_clip(model_config))
        if shared:
            daclip_state.update({CLIP_PREFIX + k: v for k, v in model.state_dict().items()})
        _load_strict(daclip, daclip_state, "DA-CLIP", path)
        recorded = metadata.get("daclip_identity")
        daclip.identity = ClipIdentity.from_dict(json.loads(recorded)) if recorded else None
        daclip.model_config = model_config
        freeze(daclip)
    from cliphaze.clip.towers import weights_fingerprint

    if weights_fingerprint(model) != identity.weights_hash:
        raise BundleError(f"{path}: embedded CLIP weights do not match the recorded identity {identity.describe()}")
    return GuidanceEncoder(config, clip, daclip=daclip, prompts=prompts, device=device, precision=precision)


def load_bundle(
    path: str | os.PathLike[str],
    *,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    scan_backend: str | None = None,
    clip_pretrained: str | None = None,
    daclip_checkpoint: str | None = None,
) -> LoadedBundle:
    """Read a bundle and build its network and guidance encoder.

    Args:
        device: where the guidance towers run (the network is returned on CPU; the Dehazer moves it).
        precision: guidance tower precision ("fp32", "bf16", "fp16").
        scan_backend: override of the network's selective-scan backend.
        clip_pretrained: for referenced towers, a local file or tag replacing the recorded CLIP weights source.
        daclip_checkpoint: for referenced towers, the DA-CLIP file replacing the recorded path.

    Raises:
        BundleError: wrong kind/version, mis-keyed tensors, or towers that do not match the recorded identity.
    """
    from cliphaze.clip.encoder import GuidanceConfig, GuidanceEncoder
    from cliphaze.clip.errors import ClipGuidanceError
    from cliphaze.clip.prompts import PromptSet
    from cliphaze.clip.towers import ClipIdentity

    path = Path(path)
    tensors, metadata = _read(path)
    net = _load_net(path, tensors, metadata, scan_backend)
    if "guidance_config" not in metadata:
        return LoadedBundle(net=net, encoder=None, metadata=metadata)
    try:
        config = GuidanceConfig.from_dict(json.loads(metadata["guidance_config"]))
        prompts = None
        if "prompts" in metadata:
            prompts = PromptSet.from_tensors(tensors, json.loads(metadata["prompts"]), prefix=PROMPTS_PREFIX)
        if metadata.get("towers") == TOWERS_EMBEDDED:
            encoder = _embedded_encoder(path, tensors, metadata, config, prompts, device, precision)
        else:
            if clip_pretrained is not None:
                config = dataclasses.replace(config, clip=dataclasses.replace(config.clip, pretrained=clip_pretrained))
            if daclip_checkpoint is not None:
                config = dataclasses.replace(config, daclip_checkpoint=daclip_checkpoint)
            encoder = GuidanceEncoder.from_config(config, prompts=prompts, device=device, precision=precision)
            recorded = ClipIdentity.from_dict(json.loads(metadata["clip_identity"]))
            if not encoder.identity.matches(recorded):
                raise BundleError(
                    f"{path}: CLIP {encoder.identity.describe()} is not the one this bundle was made with "
                    f"({recorded.describe()})"
                )
    except (KeyError, ValueError, TypeError) as err:
        raise BundleError(f"{path}: invalid guidance metadata ({err})") from err
    except ClipGuidanceError as err:
        raise BundleError(f"{path}: {err}") from err
    return LoadedBundle(net=net, encoder=encoder, metadata=metadata)
