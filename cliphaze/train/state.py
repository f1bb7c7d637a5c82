"""Exact-resume training state: safetensors for tensors, a JSON sidecar for everything else; no pickle.

One state is two files in the run folder, ``state-{step:08d}.safetensors`` and ``.json``. The
safetensors file holds the model (``model.*``), the EMA copy (``ema.*``), every optimizer tensor
(``optim.{param_index}.{name}``) and the torch / CUDA / NumPy RNG arrays (``rng.*``). The JSON holds the
step, the optimizer's param groups and non-tensor state, the scheduler and grad-scaler state, the
Python RNG state, the NumPy RNG scalars, the training config and any extra data. The JSON is written
last (atomically), so a state without its JSON is incomplete and ignored.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cliphaze.checkpoint import CheckpointError, read_safetensors, write_safetensors

logger = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 1
STATE_KIND = "cliphaze-train-state"
_STEP_DIGITS = 8


class ResumeError(RuntimeError):
    """A resume state that is missing, incomplete or does not fit the run."""


class ModelEma:
    """Exponential moving average of a model's floating-point parameters and buffers.

    The decay warms up as ``min(decay, (1 + updates) / (10 + updates))`` (timm's ModelEmaV2 warm-up), so
    short runs are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        for ema_v, v in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_v.dtype.is_floating_point:
                ema_v.lerp_(v.detach(), 1.0 - decay)
            else:
                ema_v.copy_(v)
        self.updates += 1


@dataclass
class TrainObjects:
    """What a resume state captures."""

    model: nn.Module
    ema: ModelEma
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


def _state_paths(folder: Path, step: int) -> tuple[Path, Path]:
    stem = f"state-{step:0{_STEP_DIGITS}d}"
    return folder / f"{stem}.safetensors", folder / f"{stem}.json"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    tensors["rng.numpy.keys"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss_next = random.getstate()
    scalars = {
        "numpy": {"name": name, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
    }
    return tensors, scalars


def _set_rng_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if states:
            torch.cuda.set_rng_state_all(states)
    n = scalars["numpy"]
    keys = tensors["rng.numpy.keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = scalars["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def _split_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in sd["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in data["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": data["param_groups"]}


def save_state(folder: str | os.PathLike[str], step: int, objects: TrainObjects, extra: dict[str, Any]) -> Path:
    """Write the resume state of ``step``; returns the JSON path.

    Args:
        folder: run folder.
        step: optimisation steps done.
        objects: the live training objects.
        extra: JSON-able data kept with the state (config, best metric, ...).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensor_path, json_path = _state_paths(folder, step)
    tensors = {f"model.{k}": v for k, v in objects.model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in objects.ema.module.state_dict().items()})
    optim_tensors, optim_data = _split_optimizer(objects.optimizer)
    tensors.update(optim_tensors)
    rng_tensors, rng_data = _rng_state()
    tensors.update(rng_tensors)
    write_safetensors(tensor_path, tensors, {"kind": STATE_KIND, "format_version": str(STATE_FORMAT_VERSION)})
    data = {
        "kind": STATE_KIND,
        "format_version": STATE_FORMAT_VERSION,
        "step": step,
        "ema_updates": objects.ema.updates,
        "optimizer": optim_data,
        "scheduler": objects.scheduler.state_dict(),
        "scaler": objects.scaler.state_dict(),
        "rng": rng_data,
        "extra": extra,
    }
    _write_json(json_path, data)
    logger.info("saved resume state %s (step %d)", json_path, step)
    return json_path


def latest_state(folder: str | os.PathLike[str]) -> Path | None:
    """The JSON of the newest complete resume state in ``folder``, or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    complete = [p for p in sorted(folder.glob("state-*.json")) if p.with_suffix(".safetensors").is_file()]
    return complete[-1] if complete else None


def prune_states(folder: str | os.PathLike[str], keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` resume states."""
    states = sorted(Path(folder).glob("state-*.json"))
    for old in states[:-keep_last]:
        old.with_suffix(".safetensors").unlink(missing_ok=True)
        old.unlink(missing_ok=True)


def read_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON data of a resume state (``path``: its .json, its .safetensors or the run folder)."""
    path = Path(path)
    if path.is_dir():
        found = latest_state(path)
        if found is None:
            raise ResumeError(f"no complete resume state in {path}")
        path = found
    json_path = path.with_suffix(".json")
    try:
        data = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResumeError(f"cannot read resume state {json_path}: {exc}") from exc
    if data.get("kind") != STATE_KIND or data.get("format_version") != STATE_FORMAT_VERSION:
        raise ResumeError(f"{json_path} is not a resume state this build can read")
    try:
        tensors, _ = read_safetensors(json_path.with_suffix(".safetensors"))
    except CheckpointError as exc:
        raise ResumeError(str(exc)) from exc
    return tensors, data


def restore_state(tensors: dict[str, torch.Tensor], data: dict[str, Any], objects: TrainObjects) -> int:
    """Load a state read by :func:`read_state` into the live objects (RNGs included); returns the step."""

    def sub(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    try:
        objects.model.load_state_dict(sub("model."), strict=True)
        objects.ema.module.load_state_dict(sub("ema."), strict=True)
        objects.optimizer.load_state_dict(_join_optimizer(tensors, data["optimizer"]))
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ResumeError(f"resume state does not fit this model/optimizer: {exc}") from exc
    objects.ema.updates = int(data["ema_updates"])
    objects.scheduler.load_state_dict(data["scheduler"])
    objects.scaler.load_state_dict(data["scaler"])
    _set_rng_state(tensors, data["rng"])
    return int(data["step"])
