"""Choosing a dehazer and a device by name: what the CLI and the benchmarks share.

``auto`` means the trained default CLIPHaze bundle when it is installed (``cliphaze/weights/
cliphaze-t.safetensors``, found with importlib.resources) AND released as the default
(``SHIPPED_BUNDLE_IS_DEFAULT``), and ``dcp`` otherwise. ``--model cliphaze`` without ``--weights`` uses the
shipped bundle. Randomly initialised networks are never a default: ``cliphaze`` without weights is an
error.
"""

from __future__ import annotations

import importlib.resources
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch-free at import: the CLI reads MODEL_CHOICES while it builds its options
    import torch

    from cliphaze.dehazer import Dehazer

logger = logging.getLogger(__name__)

MODEL_CHOICES = ("auto", "cliphaze", "dcp", "none")
DEFAULT_BUNDLE = "cliphaze-t.safetensors"  # trained default shipped under cliphaze/weights/
# The shipped cliphaze-t is a CPU-trained preview: on the held-out content it gains 7.5-8.8 dB over the
# hazy input, +1.9 dB / -0.4 dB against dcp (docs/model-card.md; the bar is 2 dB above), and it runs at
# seconds per frame on a CPU. Until a bundle beats dcp, ``auto`` keeps dcp; flip this when one does.
SHIPPED_BUNDLE_IS_DEFAULT = False
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class DehazerChoiceError(ValueError):
    """An unusable model, weights or device choice (reported to users as bad input)."""


@dataclass(frozen=True)
class DehazerChoice:
    """What was picked and why (the CLI says it once)."""

    model: str  # "cliphaze" | "dcp" | "none"
    weights: Path | None  # bundle for cliphaze
    note: str  # one line for the log, e.g. why dcp replaced auto


def default_weights() -> Path | None:
    """The bundled trained CLIPHaze weights, or None while none are shipped."""
    try:
        candidate = importlib.resources.files("cliphaze") / "weights" / DEFAULT_BUNDLE
    except ModuleNotFoundError:
        return None
    path = Path(str(candidate))
    return path if path.is_file() else None


def choose_dehazer(model: str, weights: Path | None) -> DehazerChoice:
    """Resolve ``auto`` and check that ``cliphaze`` has weights.

    Raises:
        DehazerChoiceError: unknown model, or cliphaze without any weights.
    """
    if model not in MODEL_CHOICES:
        raise DehazerChoiceError(f"unknown model {model!r}; choose from {', '.join(MODEL_CHOICES)}")
    if weights is not None and model in ("auto", "cliphaze"):
        return DehazerChoice("cliphaze", weights, f"model: cliphaze from {weights}")
    if weights is not None:
        raise DehazerChoiceError(f"--weights only applies to the cliphaze model, not {model}")
    bundled = default_weights()
    if model == "cliphaze":
        if bundled is None:
            raise DehazerChoiceError("no trained CLIPHaze weights are installed; pass --weights BUNDLE")
        return DehazerChoice("cliphaze", bundled, f"model: cliphaze (bundled {bundled.name})")
    if model == "auto":
        if bundled is not None and SHIPPED_BUNDLE_IS_DEFAULT:
            return DehazerChoice("cliphaze", bundled, f"model: cliphaze (bundled {bundled.name})")
        if bundled is not None:
            return DehazerChoice(
                "dcp", None, "using the dcp dehazer (the shipped CLIPHaze preview is opt-in: --model cliphaze)"
            )
        return DehazerChoice("dcp", None, "no trained CLIPHaze weights installed yet: using the dcp dehazer")
    return DehazerChoice(model, None, f"model: {model}")


def resolve_device(text: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda:N`` is checked to exist.

    Raises:
        DehazerChoiceError: malformed name, or a CUDA device that is not there.
    """
    if not _DEVICE_RE.match(text):
        raise DehazerChoiceError(f"unknown device {text!r}; use auto, cpu, cuda or cuda:N")
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DehazerChoiceError(f"device {text} requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DehazerChoiceError(f"device {text} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return device


def create_dehazer(
    choice: DehazerChoice,
    device: torch.device,
    *,
    precision: str = "fp32",
    scan_backend: str = "auto",
    compile_mode: str = "off",
) -> Dehazer:
    """Instantiate the chosen dehazer on ``device``.

    ``compile_mode`` (cliphaze only): ``cliphaze.compiled.COMPILE_MODES``; "reduce-overhead" = CUDA graphs.

    Raises:
        DehazerChoiceError: compile asked for a dehazer without a network, or CUDA graphs off CUDA.
    """
    if compile_mode != "off":
        from cliphaze.compiled import CompileError, check_compile_mode

        if choice.model != "cliphaze":
            raise DehazerChoiceError(f"--compile applies to the cliphaze model, not {choice.model} ({choice.note})")
        try:
            check_compile_mode(compile_mode, "inductor", device)
        except CompileError as exc:
            raise DehazerChoiceError(str(exc)) from exc
    if choice.model == "dcp":
        from cliphaze.baselines.dcp import DarkChannelDehazer

        return DarkChannelDehazer(device)
    if choice.model == "none":
        from cliphaze.baselines.none import PassthroughDehazer

        return PassthroughDehazer(device)
    from cliphaze.inference import ClipHazeDehazer

    assert choice.weights is not None  # choose_dehazer guarantees it
    return ClipHazeDehazer.from_bundle(choice.weights, device=device, precision=precision, scan_backend=scan_backend,
                                       compile_mode=compile_mode)
