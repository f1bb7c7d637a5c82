"""Exceptions of the CLIP guidance package; each carries one clear, user-facing line."""

from __future__ import annotations


class ClipGuidanceError(Exception):
    """Base class of every error raised by :mod:`cliphaze.clip`."""


class ClipUnavailable(ClipGuidanceError, ImportError):
    """open_clip (or another optional dependency of guidance) is not installed."""


class ClipLoadError(ClipGuidanceError):
    """A CLIP model could not be built or its weights could not be loaded."""


class UnsupportedTowerError(ClipLoadError):
    """The open_clip architecture has a tower that guidance cannot use (e.g. a timm or ResNet image tower)."""


class CheckpointFormatError(ClipLoadError):
    """A checkpoint file is unreadable, not a state dict, or refused (pickled code under ``weights_only``)."""


class StateDictMismatchError(ClipLoadError):
    """A state dict has missing, unexpected or mis-shaped keys for the model it is loaded into."""


class PromptError(ClipGuidanceError):
    """Learned prompts are malformed or cannot be trained from the given data."""


class PromptMismatchError(PromptError):
    """Learned prompts belong to a different CLIP than the one they are used with."""
