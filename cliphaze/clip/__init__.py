"""CLIP guidance for CLIPHaze: density map (DAM), DA-CLIP semantic tokens (SAM), learned prompts.

Importing this package is light: open_clip is imported only when a tower is built or prompts are made.
"""

from __future__ import annotations

from cliphaze.clip.daclip import DaClip, create_daclip, load_daclip, read_checkpoint, to_official_state_dict
from cliphaze.clip.density import DENSITY_TEMPERATURE, density_map, patch_features
from cliphaze.clip.encoder import PAPER_CLIP, GuidanceConfig, GuidanceEncoder
from cliphaze.clip.errors import (
    CheckpointFormatError,
    ClipGuidanceError,
    ClipLoadError,
    ClipUnavailable,
    PromptError,
    PromptMismatchError,
    StateDictMismatchError,
    UnsupportedTowerError,
)
from cliphaze.clip.prompt_training import PromptTrainConfig, train_prompts
from cliphaze.clip.prompts import PromptSet, load_prompts, save_prompts
from cliphaze.clip.towers import SHIPPED_CONFIG_DIR, ClipIdentity, ClipSpec, LoadedClip, create_clip
from cliphaze.clip.towers import register_model_config

__all__ = [
    "DENSITY_TEMPERATURE",
    "PAPER_CLIP",
    "SHIPPED_CONFIG_DIR",
    "CheckpointFormatError",
    "ClipGuidanceError",
    "ClipIdentity",
    "ClipLoadError",
    "ClipSpec",
    "ClipUnavailable",
    "DaClip",
    "GuidanceConfig",
    "GuidanceEncoder",
    "LoadedClip",
    "PromptError",
    "PromptMismatchError",
    "PromptSet",
    "PromptTrainConfig",
    "StateDictMismatchError",
    "UnsupportedTowerError",
    "create_clip",
    "create_daclip",
    "density_map",
    "load_daclip",
    "load_prompts",
    "patch_features",
    "read_checkpoint",
    "register_model_config",
    "save_prompts",
    "to_official_state_dict",
    "train_prompts",
]
