"""Checkpoints: safetensors only, with the variant config and a format version in the metadata.

Nothing is ever unpickled: a PyTorch ``.pt`` (zip or raw pickle) file is recognised by its magic bytes
and refused. The header is validated before ``safetensors`` reads the file, so a corrupt or truncated
file gives one clear :class:`CheckpointError` line. ``read_safetensors``/``write_safetensors`` are the
low-level pair other bundle formats reuse (atomic writes: temp file + rename).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cliphaze.config import ClipHazeConfig, ConfigError, diff_configs

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the tensor layout or metadata meaning changes
KIND = "cliphaze-net"  # metadata "kind" of a network checkpoint
EXTRA_PREFIX = "extra."  # tensors stored next to the weights (e.g. by training) live under this prefix
RESERVED_METADATA = ("format_version", "kind", "config")
HEADER_LEN_BYTES = 8  # safetensors: little-endian u64 header length, then the JSON header
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own upper bound on the JSON header
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
PICKLE_PROTO = b"\x80"  # first byte of a pickle of protocol >= 2 (legacy torch.save)
NAMES_SHOWN = 5  # how many offending key names an error message lists


class CheckpointError(Exception):
    """A checkpoint file is missing, not safetensors, corrupt, or does not fit the model."""


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:NAMES_SHOWN])
    return shown + (f" (+{len(keys) - NAMES_SHOWN} more)" if len(keys) > NAMES_SHOWN else "")


def _validate_header(path: Path) -> dict[str, Any]:
    """Parse and sanity-check the safetensors header of ``path`` without reading tensor data."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(HEADER_LEN_BYTES)
            if head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_PROTO):
                raise CheckpointError(
                    f"refusing to unpickle {path}: it is a PyTorch pickle/zip checkpoint, not safetensors "
                    "(convert it in a trusted environment with safetensors.torch.save_file)"
                )
            if len(head) < HEADER_LEN_BYTES:
                raise CheckpointError(f"corrupt or truncated checkpoint {path}: {size} bytes is too short")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > min(MAX_HEADER_BYTES, size - HEADER_LEN_BYTES):
                raise CheckpointError(f"corrupt or truncated checkpoint {path}: header length {header_len} is invalid")
            raw = f.read(header_len)
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint not found: {path}") from exc
    except IsADirectoryError as exc:
        raise CheckpointError(f"checkpoint path is a directory: {path}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(f"corrupt checkpoint {path}: unreadable safetensors header ({exc})") from exc
    expected = HEADER_LEN_BYTES + header_len + max(ends, default=0)
    if size < expected:
        raise CheckpointError(f"truncated checkpoint {path}: {size} bytes, header needs {expected}")
    return header


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (on CPU) and the string metadata of a safetensors file.

    Raises:
        CheckpointError: missing, pickle/zip, corrupt or truncated file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    header = _validate_header(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt checkpoint {path}: {exc}") from exc
    metadata = header.get("__metadata__") or {}
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def write_safetensors(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> None:
    """Write tensors + string metadata atomically (temp file in the same folder, then rename).

    Raises:
        CheckpointError: the tensors cannot be serialised (e.g. shared storage) or the write failed.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(cpu, tmp, metadata={str(k): str(v) for k, v in metadata.items()})
        os.replace(tmp, path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> None:
    """Save a :class:`~cliphaze.model.ClipHazeNet` (weights + config) as safetensors.

    Args:
        path: destination file (written atomically).
        model: the network; its ``config`` goes into the metadata.
        extra_tensors: more tensors to keep alongside (stored under ``extra.``; returned by load in
            ``metadata["extra_tensors"]``).
        extra_metadata: more string metadata; may not use the reserved keys.
    """
    config: ClipHazeConfig = model.config  # type: ignore[assignment]
    extra_metadata = dict(extra_metadata or {})
    clash = [k for k in extra_metadata if k in RESERVED_METADATA]
    if clash:
        raise CheckpointError(f"extra_metadata may not set reserved keys: {_names(clash)}")
    tensors = dict(model.state_dict())
    for key, value in (extra_tensors or {}).items():
        tensors[EXTRA_PREFIX + key] = value
    metadata = {
        **extra_metadata,
        "format_version": str(FORMAT_VERSION),
        "kind": KIND,
        "config": json.dumps(config.to_dict(), sort_keys=True),
    }
    write_safetensors(path, tensors, metadata)
    logger.info("saved %s checkpoint %s (%d tensors)", config.name, path, len(tensors))


def expected_shapes(config: ClipHazeConfig) -> dict[str, tuple[int, ...]]:
    """Parameter/buffer names and shapes of the network a config builds (built on the meta device)."""
    from cliphaze.model import ClipHazeNet

    with torch.device("meta"):
        model = ClipHazeNet(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_checkpoint(
    path: str | os.PathLike[str], *, expected_config: ClipHazeConfig | None = None
) -> tuple[dict[str, torch.Tensor], ClipHazeConfig, dict[str, Any]]:
    """Read and validate a network checkpoint.

    Args:
        path: a file written by :func:`save_checkpoint`.
        expected_config: when given, the stored config must match it (runtime fields such as the scan
            backend are ignored).

    Returns:
        (state_dict, config, metadata): the weights (CPU), the stored config, and the metadata with
        ``format_version`` (int), ``kind``, ``config`` (dict), any extra string entries and
        ``extra_tensors`` (dict of the tensors saved with ``extra_tensors``).

    Raises:
        CheckpointError: missing/pickle/corrupt file, unknown format or kind, config mismatch, or
            missing/unexpected/mis-shaped keys (named in the message).
    """
    path = Path(path)
    tensors, raw_meta = read_safetensors(path)
    version = raw_meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path}: unknown checkpoint format_version {version!r} (this build reads {FORMAT_VERSION})"
        )
    if raw_meta.get("kind") != KIND:
        raise CheckpointError(f"{path}: metadata kind is {raw_meta.get('kind')!r}, not a {KIND!r} checkpoint")
    try:
        config_dict = json.loads(raw_meta["config"])
        config = ClipHazeConfig.from_dict(config_dict)
    except (KeyError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{path}: invalid config in metadata ({exc})") from exc
    if expected_config is not None:
        differing = diff_configs(expected_config, config)
        if differing:
            raise CheckpointError(
                f"{path}: checkpoint config {config.name!r} does not match {expected_config.name!r}; "
                f"differing fields: {_names(differing)}"
            )
    extras = {k[len(EXTRA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    shapes = expected_shapes(config)
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted(set(state) - set(shapes))
    common = set(shapes) & set(state)
    misshaped = sorted(
        f"{k} {tuple(state[k].shape)} != {shapes[k]}" for k in common if tuple(state[k].shape) != shapes[k]
    )
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped)):
        if keys:
            raise CheckpointError(f"{path}: {label}: {_names(keys)}")
    metadata: dict[str, Any] = dict(raw_meta)
    metadata.update(format_version=FORMAT_VERSION, config=config_dict, extra_tensors=extras)
    return state, config, metadata
