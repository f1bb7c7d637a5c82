"""The one interface pipelines use to remove haze: :class:`Dehazer`.

Frames cross this boundary as uint8 RGB tensors (N, H, W, 3) on the dehazer's device. Eval mode,
``no_grad``, autocast and value-range mapping stay inside implementations; pipelines never touch an
``nn.Module``. Guidance is split out of ``restore`` so pipelines can compute it every k-th frame (on a
side CUDA stream) and reuse it in between.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from cliphaze.guidance_types import Guidance


@runtime_checkable
class Dehazer(Protocol):
    """Anything that removes haze from a batch of frames."""

    name: str  # "cliphaze-t", "dcp", "none", ...
    device: torch.device

    @property
    def uses_guidance(self) -> bool:
        """True when ``encode_guidance`` does real work worth caching."""
        ...

    def encode_guidance(self, frames: torch.Tensor) -> Guidance:
        """Guidance for frames (N, H, W, 3) uint8 on ``device``. May be called on a side stream."""
        ...

    def restore(self, frames: torch.Tensor, guidance: Guidance | None, *, scale: float = 1.0) -> torch.Tensor:
        """Dehazed frames (N, H, W, 3) uint8 on ``device``.

        Args:
            frames: (N, H, W, 3) uint8 RGB on ``device``.
            guidance: from ``encode_guidance`` of these or earlier frames (batch N or 1); ``None`` means
                compute it now.
            scale: run the network at ``scale`` x resolution and bring the restoration back to full
                resolution by guided upsampling of its reconstruction fields (1.0 = full resolution).
        """
        ...


@runtime_checkable
class SupportsWarmUp(Protocol):
    """A dehazer with work worth doing before the first frame (capturing CUDA graphs for the frame size)."""

    def warm_up(self, batch: int, height: int, width: int, *, scale: float = 1.0) -> bool:
        """Prepare restoring batches of (batch, height, width) frames at ``scale``; True when it did something."""
        ...
