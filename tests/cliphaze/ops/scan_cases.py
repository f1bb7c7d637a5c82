"""Helpers of the selective-scan tests: the spec's test vector and random scan problems."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ScanCase:
    """A random scan problem; ``bc`` is "invariant" (Dm, N), "shared" (b, N, L) or "grouped" (b, G, N, L)."""

    batch: int
    dim: int
    d_state: int
    length: int
    bc: str = "grouped"
    groups: int = 2
    use_d: bool = True
    use_z: bool = True
    use_bias: bool = True
    softplus: bool = True

    def make(self, dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, torch.Tensor | bool | None]:
        """Leaf tensors that require grad, keyed by selective_scan's argument names."""
        gen = torch.Generator().manual_seed(seed)

        def rand(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()

        bc_shape = {
            "invariant": (self.dim, self.d_state),
            "shared": (self.batch, self.d_state, self.length),
            "grouped": (self.batch, self.groups, self.d_state, self.length),
        }[self.bc]
        a = -(torch.rand(self.dim, self.d_state, generator=gen, dtype=torch.float64) * 3 + 0.1)
        return {
            "u": rand(self.batch, self.dim, self.length),
            "delta": rand(self.batch, self.dim, self.length),
            "A": a.to(dtype).requires_grad_(),
            "B": rand(*bc_shape),
            "C": rand(*bc_shape),
            "D": rand(self.dim) if self.use_d else None,
            "z": rand(self.batch, self.dim, self.length) if self.use_z else None,
            "delta_bias": rand(self.dim) if self.use_bias else None,
            "delta_softplus": self.softplus,
        }


def spec_vector() -> tuple[dict[str, torch.Tensor | bool], torch.Tensor, torch.Tensor]:
    """Spec section 5.5's test vector: (kwargs, expected out (1, 4, 3), expected last_state (1, 4, 2))."""
    dim, n_state, length, groups = 4, 2, 3, 2
    c = torch.arange(dim, dtype=torch.float64)[:, None]
    t = torch.arange(length, dtype=torch.float64)[None]
    g = torch.arange(groups, dtype=torch.float64)[:, None, None]
    n = torch.arange(n_state, dtype=torch.float64)[None, :, None]
    tt = torch.arange(length, dtype=torch.float64)[None, None]
    kwargs = {
        "u": ((3 * c + t + 1) / 10)[None].float(),
        "delta": (-1 + 2 * (3 * c + t) / 11)[None].float(),
        "A": torch.tensor([[-1.0, -2.0]] * dim),
        "B": (0.1 + 0.1 * (6 * g + 3 * n + tt))[None].float(),
        "C": (-0.6 + 1.2 * (6 * g + 3 * n + tt) / 11)[None].float(),
        "D": torch.ones(dim),
        "delta_bias": torch.tensor([0.0, 0.1, -0.1, 0.2]),
        "delta_softplus": True,
    }
    out = torch.tensor(
        [[0.094703, 0.184788, 0.276047], [0.364051, 0.435282, 0.522151],
         [0.902452, 1.295017, 1.824153], [1.502459, 2.156748, 3.037319]]  # fmt: skip
    )[None]
    last = torch.tensor([[0.049210, 0.094665], [0.161720, 0.295197], [0.987929, 1.091196], [1.902011, 2.197647]])[None]
    return kwargs, out, last
