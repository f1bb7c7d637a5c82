"""SS2D: the four-direction 2-D selective scan of the Mamba path (spec 2.3.2, VMamba v0 / MambaIR).

The scan is :func:`cliphaze.ops.cross_selective_scan`: the four directions of
:mod:`cliphaze.ops.cross_scan`, fused into one call on the CPU backend, otherwise
:func:`cliphaze.ops.selective_scan` (backend chosen by name, "auto" per device) between explicit
``cross_scan`` / ``cross_merge`` copies. The scan computes in fp32 whatever the surrounding autocast dtype;
the Triton backend reads bf16 inputs as they are, the others get fp32 copies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cliphaze.config import SSMConfig
from cliphaze.ops import cross_selective_scan, resolve_backend
from cliphaze.ops.cross_scan import NUM_DIRECTIONS


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """softplus^-1(y) = y + log(-expm1(-y)) for y > 0."""
    return y + torch.log(-torch.expm1(-y))


class SS2D(nn.Module):
    """Four-direction selective-scan layer, channels-last in and out.

    Args:
        dim: model channels C.
        config: d_state, expand, d_conv, dt_rank and dt initialisation, scan backend.
    """

    def __init__(self, dim: int, config: SSMConfig) -> None:
        super().__init__()
        self.d_inner = config.d_inner(dim)
        self.d_state = config.d_state
        self.dt_rank = config.rank(dim)
        self.scan_backend = config.scan_backend
        k, d, n, r = NUM_DIRECTIONS, self.d_inner, self.d_state, self.dt_rank

        self.in_proj = nn.Linear(dim, 2 * d, bias=False)
        self.conv2d = nn.Conv2d(d, d, config.d_conv, padding=(config.d_conv - 1) // 2, groups=d, bias=True)
        # Per-direction projections, stacked: x -> (dt_rank + 2N) and dt_rank -> d_inner.
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d))
        self.A_logs = nn.Parameter(torch.empty(k * d, n))
        self.Ds = nn.Parameter(torch.empty(k * d))
        self.A_logs._no_weight_decay = True  # type: ignore[attr-defined]
        self.Ds._no_weight_decay = True  # type: ignore[attr-defined]
        self.out_norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, dim, bias=False)
        self._init_ssm(config)

    @torch.no_grad()
    def _init_ssm(self, config: SSMConfig) -> None:
        """VMamba v0 initialisation (mamba_init): x_proj like nn.Linear, dt "random", S4D-real A, D = 1."""
        bound = 1.0 / math.sqrt(self.d_inner)
        self.x_proj_weight.uniform_(-bound, bound)
        std = self.dt_rank**-0.5
        self.dt_projs_weight.uniform_(-std, std)
        if self.dt_projs_bias.device.type != "meta":
            log_min, log_max = math.log(config.dt_min), math.log(config.dt_max)
            dt = torch.exp(torch.rand(self.dt_projs_bias.shape) * (log_max - log_min) + log_min)
            self.dt_projs_bias.copy_(inverse_softplus(dt.clamp(min=config.dt_init_floor)))
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_logs.device)
        self.A_logs.copy_(torch.log(a).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def _scan(self, x: torch.Tensor, dts: torch.Tensor, bs: torch.Tensor, cs: torch.Tensor) -> torch.Tensor:
        """Four-direction scan computed in fp32: x (B, D, H, W); dts (B, K, D, L), bs, cs (B, K, N, L) row-major.

        Returns (B, D, L): fp32, or x's dtype on the triton backend.
        """
        b, d, h, w = x.shape
        if x.device.type == "meta":  # shape-only pass (FLOP counting); the scan's cost is added analytically
            return x.new_empty(b, d, h * w)
        compiling = torch.compiler.is_compiling()
        # The Triton kernels read bf16 (autocast) inputs as they are and accumulate in fp32: no fp32 copies.
        is_triton = not compiling and resolve_backend(self.scan_backend, x.device) == "triton"
        if not is_triton:
            x, dts, bs, cs = x.float(), dts.float(), bs.float(), cs.float()
        return cross_selective_scan(
            x,
            dts,
            -torch.exp(self.A_logs.float()),
            bs,
            cs,
            D=self.Ds.float(),
            delta_bias=self.dt_projs_bias.float().view(-1),
            delta_softplus=True,
            backend=self.scan_backend,
            # Under torch.compile the scan kernel stays outside the graph (it cannot be traced).
            outside_graph=compiling,
            # The fused CPU call pays off on training crops (training step x1.06 for cliphaze-t at 2x96 px)
            # but its strided column-order reads lose on large inference grids (x0.80 at 256 px):
            # docs/performance.md. So it runs only when gradients are recorded. The Triton call always fuses.
            fuse=is_triton or (torch.is_grad_enabled() and x.requires_grad),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H, W, C) -> (B, H, W, C)."""
        b, h, w, _ = x.shape
        length = h * w
        d, n, r = self.d_inner, self.d_state, self.dt_rank
        xc, z = self.in_proj(x).chunk(2, dim=-1)
        xc = F.silu(self.conv2d(xc.permute(0, 3, 1, 2).contiguous()))  # (B, D, H, W)
        # The per-direction projections are per pixel, so they are taken on the row-major grid once
        # (no four reordered copies of xc); the scan reads each direction's order itself.
        x_dbl = torch.einsum("bdl,kcd->bkcl", xc.reshape(b, d, length), self.x_proj_weight.to(xc.dtype))
        dts, bs, cs = torch.split(x_dbl, [r, n, n], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight.to(dts.dtype))
        y = self._scan(xc, dts, bs.contiguous(), cs.contiguous())  # (B, D, L)
        y = y.transpose(1, 2).reshape(b, h, w, d)
        y = self.out_norm(y.to(x.dtype)) * F.silu(z)
        return self.out_proj(y)
