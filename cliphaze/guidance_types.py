"""The guidance record that the network consumes and that pipelines cache across frames."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Guidance:
    """CLIP guidance for a batch of N frames.

    Attributes:
        density: (N, 1, h, w) haze-density map in [0, 1] (1 = dense haze), coarse patch grid
            (7x7 for ViT-B/32 at 224 px). ``None`` runs CAM without DAM.
        tokens: (N, T, D) DA-CLIP content (degradation-free) tokens. ``None`` runs CAM without SAM.
    """

    density: torch.Tensor | None = None
    tokens: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        for t in (self.density, self.tokens):
            if t is not None:
                return t.shape[0]
        return 0

    def select(self, index: int | slice | torch.Tensor) -> Guidance:
        """Guidance of a subset of the batch (keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Guidance(
            density=None if self.density is None else self.density[index],
            tokens=None if self.tokens is None else self.tokens[index],
        )

    def expand(self, n: int) -> Guidance:
        """Repeat a batch-1 guidance for n frames."""
        return Guidance(
            density=None if self.density is None else self.density.expand(n, *self.density.shape[1:]),
            tokens=None if self.tokens is None else self.tokens.expand(n, *self.tokens.shape[1:]),
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Guidance:
        return Guidance(
            density=None if self.density is None else self.density.to(device=device, dtype=dtype),
            tokens=None if self.tokens is None else self.tokens.to(device=device, dtype=dtype),
        )

    @staticmethod
    def cat(items: list[Guidance]) -> Guidance:
        """Concatenate along the batch dimension (all items must carry the same fields)."""
        dens = [g.density for g in items]
        toks = [g.tokens for g in items]
        return Guidance(
            density=None if any(d is None for d in dens) else torch.cat(dens),  # type: ignore[arg-type]
            tokens=None if any(t is None for t in toks) else torch.cat(toks),  # type: ignore[arg-type]
        )

    def lerp(self, newer: Guidance, weight: float) -> Guidance:
        """Temporal EMA step: ``self + weight * (newer - self)``; weight 1 returns ``newer`` exactly."""
        if weight >= 1.0:
            return newer

        def mix(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
            if a is None or b is None or a.shape != b.shape:
                return b
            return torch.lerp(a, b, weight)

        return Guidance(density=mix(self.density, newer.density), tokens=mix(self.tokens, newer.tokens))
