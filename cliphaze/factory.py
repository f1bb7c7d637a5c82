"""Build CLIPHaze networks by variant name or config, optionally from a checkpoint."""

from __future__ import annotations

import dataclasses
import logging
import os

import torch

from cliphaze.config import VARIANTS, ClipHazeConfig, get_config
from cliphaze.model import ClipHazeNet

logger = logging.getLogger(__name__)


def list_models() -> list[str]:
    """Names of the built-in variants, smallest first."""
    return list(VARIANTS)


def create_model(
    name_or_config: str | ClipHazeConfig | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    scan_backend: str | None = None,
) -> ClipHazeNet:
    """A :class:`ClipHazeNet`, random-initialised or loaded from a safetensors checkpoint.

    Args:
        name_or_config: variant name (see :func:`list_models`) or a config; None takes the config stored
            in ``checkpoint``.
        checkpoint: safetensors file from :func:`cliphaze.checkpoint.save_checkpoint`; its config must
            match ``name_or_config`` when both are given.
        device: where the model lives.
        dtype: parameter dtype (None keeps float32).
        scan_backend: override the config's selective-scan backend ("auto", "reference", "chunked", ...).

    Raises:
        ValueError: unknown variant or scan backend name, or neither a name/config nor a checkpoint.
        cliphaze.checkpoint.CheckpointError: unreadable or mismatching checkpoint.
    """
    if isinstance(name_or_config, str):
        config: ClipHazeConfig | None = get_config(name_or_config)
    elif isinstance(name_or_config, ClipHazeConfig) or name_or_config is None:
        config = name_or_config
    else:
        kind = type(name_or_config).__name__
        raise ValueError(f"name_or_config must be a variant name or ClipHazeConfig, got {kind}")
    state = None
    if checkpoint is not None:
        from cliphaze.checkpoint import load_checkpoint

        state, stored, _ = load_checkpoint(checkpoint, expected_config=config)
        config = config or stored
    if config is None:
        raise ValueError("create_model needs a variant name, a config or a checkpoint")
    if scan_backend is not None:
        if scan_backend != "auto":
            from cliphaze.ops import get_scan_backend

            get_scan_backend(scan_backend)  # ValueError naming the known backends
        config = config.replace(ssm=dataclasses.replace(config.ssm, scan_backend=scan_backend))

    model = ClipHazeNet(config)
    if state is not None:
        model.load_state_dict(state, strict=True)
        logger.info("loaded %s weights from %s", config.name, checkpoint)
    return model.to(device=device, dtype=dtype)
