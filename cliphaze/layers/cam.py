"""CLIP-instructed aggregation of the two paths (spec 2.5-2.6): DAM, SAM and the CAM blend.

All maps are channels-last (B, H, W, C). The DAM turns the haze-density map into per-pixel,
per-channel logits for the two paths; the SAM does the same from cross-attention of each path's
output to the semantic tokens. CAM sums a learned bias and both logits, takes a softmax across the
pair and blends: ``F = proj(a_T * F_T + a_M * F_M)``. The last projections of DAM and SAM and the bias
start at zero, so an untrained CAM is an exact 50/50 average; without guidance (or with DAM/SAM off)
their logits are 0 and the blend rests on the learned bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cliphaze.config import GuidanceInputConfig

NUM_PATHS = 2  # Transformer path and Mamba path


class DensityAggregation(nn.Module):
    """DAM: ``PW(1 -> 2C)`` of the density map, zero-initialised (spec 2.5 step 5).

    Args:
        dim: channels C of each path.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(1, NUM_PATHS * dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, density: torch.Tensor) -> torch.Tensor:
        """density (B, H, W, 1) in [0, 1] -> logits (B, H, W, 2C), [transformer ; mamba]."""
        return self.proj(density)


class _PathQuery(nn.Module):
    """Restormer-style query of one path: DW(PW(LN(F))) (spec 2.6 step 2), plus its K/V projections."""

    def __init__(self, dim: int, semantic_dim: int, kernel: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.pw = nn.Linear(dim, dim)
        self.dw = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.key = nn.Linear(semantic_dim, dim, bias=False)
        self.value = nn.Linear(semantic_dim, dim, bias=False)

    def forward(self, feat: torch.Tensor, tokens: torch.Tensor, impl: str) -> torch.Tensor:
        """feat (B, H, W, C), tokens (B, T, S) -> attended context (B, C, H, W)."""
        b, h, w, c = feat.shape
        q = self.dw(self.pw(self.norm(feat)).permute(0, 3, 1, 2))  # (B, C, H, W)
        q = q.flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, L, C)
        tokens = tokens.to(q.dtype)
        k, v = self.key(tokens).unsqueeze(1), self.value(tokens).unsqueeze(1)  # (B, 1, T, C)
        if impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = ((q * c**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)


class SemanticAggregation(nn.Module):
    """SAM: two single-head cross-attentions (one per path) to the semantic tokens, then weight generation
    ``PW(2C -> 2C)(GELU(DW(concat)))`` with the last PW zero-initialised (spec 2.6 steps 2-3).

    Args:
        dim: channels C of each path.
        semantic_dim: width S of the tokens.
        kernel: depth-wise conv kernel.
        eps: LayerNorm epsilon.
        impl: "sdpa" or "math" attention.
    """

    def __init__(self, dim: int, semantic_dim: int, *, kernel: int, eps: float, impl: str) -> None:
        super().__init__()
        self.impl = impl
        self.query_attn = _PathQuery(dim, semantic_dim, kernel, eps)
        self.query_ssm = _PathQuery(dim, semantic_dim, kernel, eps)
        both = NUM_PATHS * dim
        self.weight_dw = nn.Conv2d(both, both, kernel, padding=kernel // 2, groups=both)
        self.weight_proj = nn.Conv2d(both, both, 1)
        nn.init.zeros_(self.weight_proj.weight)
        nn.init.zeros_(self.weight_proj.bias)

    def forward(self, f_attn: torch.Tensor, f_ssm: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """f_attn, f_ssm (B, H, W, C); tokens (B, T, S) -> logits (B, H, W, 2C), [transformer ; mamba]."""
        s = torch.cat([self.query_attn(f_attn, tokens, self.impl), self.query_ssm(f_ssm, tokens, self.impl)], dim=1)
        return self.weight_proj(F.gelu(self.weight_dw(s))).permute(0, 2, 3, 1)


class ClipAggregation(nn.Module):
    """CAM: blends the two paths with weights from a learned bias + DAM + SAM logits (spec 2.6 step 4).

    Args:
        dim: channels C.
        config: guidance widths and the ablation switches (use_dam, use_sam, cam_mode).
        eps: LayerNorm epsilon.
        impl: "sdpa" or "math" for SAM's cross-attention.
    """

    def __init__(self, dim: int, config: GuidanceInputConfig, *, eps: float, impl: str) -> None:
        super().__init__()
        self.mode = config.cam_mode
        learned = self.mode == "cam"
        self.logit_bias = nn.Parameter(torch.zeros(NUM_PATHS * dim)) if learned else None
        self.dam = DensityAggregation(dim) if learned and config.use_dam else None
        self.sam = (
            SemanticAggregation(dim, config.semantic_dim, kernel=config.sam_kernel, eps=eps, impl=impl)
            if learned and config.use_sam
            else None
        )
        self.proj = nn.Linear(dim, dim)

    def path_weights(
        self, f_attn: torch.Tensor, f_ssm: torch.Tensor, density: torch.Tensor | None, tokens: torch.Tensor | None
    ) -> torch.Tensor:
        """Weight a_T (B, H, W, C) of the Transformer path in [0, 1]; the Mamba path gets 1 - a_T."""
        if self.logit_bias is None:
            return torch.full_like(f_attn, 0.5)
        logits = self.logit_bias.to(f_attn.dtype).expand(*f_attn.shape[:-1], -1)
        if self.dam is not None and density is not None:
            logits = logits + self.dam(density)
        if self.sam is not None and tokens is not None:
            logits = logits + self.sam(f_attn, f_ssm, tokens)
        l_attn, l_ssm = logits.chunk(NUM_PATHS, dim=-1)
        return torch.sigmoid(l_attn - l_ssm)  # softmax over the pair

    def forward(
        self,
        f_attn: torch.Tensor,
        f_ssm: torch.Tensor,
        density: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """f_attn, f_ssm (B, H, W, C); density (B, H, W, 1) or None; tokens (B, T, S) or None -> (B, H, W, C)."""
        if self.mode == "sum":
            return self.proj(f_attn + f_ssm)
        a_attn = self.path_weights(f_attn, f_ssm, density, tokens)
        return self.proj(torch.lerp(f_ssm, f_attn, a_attn))
