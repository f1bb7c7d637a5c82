"""``none``: a passthrough dehazer that measures the cost of the I/O path alone."""

from __future__ import annotations

import torch

from cliphaze.guidance_types import Guidance


class PassthroughDehazer:
    """Returns its input unchanged; never computes guidance."""

    name = "none"

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    @property
    def uses_guidance(self) -> bool:
        return False

    def encode_guidance(self, frames: torch.Tensor) -> Guidance:
        """Empty guidance (no fields) for frames (N, H, W, 3) uint8."""
        return Guidance()

    def restore(self, frames: torch.Tensor, guidance: Guidance | None, *, scale: float = 1.0) -> torch.Tensor:
        """The same frames (N, H, W, 3) uint8; ``guidance`` and ``scale`` are ignored."""
        return frames
