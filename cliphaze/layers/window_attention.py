"""Window self-attention of the Transformer path (spec 2.3.1): non-overlapping windows, few heads,
DehazeFormer's log-relative position bias, and two execution paths with identical weights.

``impl="sdpa"`` calls ``torch.nn.functional.scaled_dot_product_attention``; ``impl="math"`` writes the
same computation out (softmax(QK^T * scale + bias) V) for parity tests and for FLOP counting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cliphaze.config import AttentionConfig
from cliphaze.layers.padding import pad_amount, reflect_pad


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of window_size -> (B * nW, window_size**2, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)


def window_reverse(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, window_size**2, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    nh, nw = height // window_size, width // window_size
    x = windows.view(-1, nh, nw, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def log_relative_positions(window_size: int) -> torch.Tensor:
    """(N, N, 2) offsets (dy, dx) between the N = window_size**2 tokens, mapped by sign(d) * log(1 + |d|)."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).float()  # (N, N, 2)
    return torch.sign(rel) * torch.log1p(rel.abs())


class WindowAttention(nn.Module):
    """Multi-head (default single-head) self-attention inside square windows, channels-last in and out.

    Args:
        dim: channels C.
        config: window size, heads, position-MLP width, execution path.
        shift: shift the windows by window_size // 2 (reflect-padded, DehazeFormer style; no mask).
    """

    def __init__(self, dim: int, config: AttentionConfig, *, shift: bool = False) -> None:
        super().__init__()
        if dim % config.num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {config.num_heads}")
        self.dim = dim
        self.window_size = config.window_size
        self.num_heads = config.num_heads
        self.head_dim = dim // config.num_heads
        self.scale = self.head_dim**-0.5
        self.shift_size = config.window_size // 2 if shift else 0
        self.impl = config.impl
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.pos_mlp = nn.Sequential(
            nn.Linear(2, config.pos_mlp_hidden),
            nn.ReLU(inplace=True),
            # no bias: a constant per head shifts all logits of a row equally, which softmax ignores
            nn.Linear(config.pos_mlp_hidden, self.num_heads, bias=False),
        )
        self.register_buffer("relative_positions", log_relative_positions(config.window_size), persistent=False)

    def position_bias(self) -> torch.Tensor:
        """(heads, N, N) additive attention bias from the log-relative offsets."""
        return self.pos_mlp(self.relative_positions).permute(2, 0, 1)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """q, k, v (B', heads, N, d); bias (heads, N, N) -> (B', heads, N, d)."""
        if self.impl == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale)
        logits = (q * self.scale) @ k.transpose(-2, -1) + bias.to(q.dtype)
        return logits.softmax(dim=-1) @ v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        ws, shift = self.window_size, self.shift_size
        qkv = self.qkv(x).permute(0, 3, 1, 2)  # (B, 3C, H, W): pointwise, so it commutes with padding
        pad_h, pad_w = pad_amount(h, ws), pad_amount(w, ws)
        if shift:
            qkv = reflect_pad(qkv, shift, (ws - shift + pad_h) % ws, shift, (ws - shift + pad_w) % ws)
        else:
            qkv = reflect_pad(qkv, 0, pad_h, 0, pad_w)
        hp, wp = qkv.shape[-2:]
        windows = window_partition(qkv.permute(0, 2, 3, 1), ws)  # (B*nW, N, 3C)
        n = windows.shape[1]
        q, k, v = windows.view(-1, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = self._attend(q, k, v, self.position_bias())  # (B*nW, heads, N, d)
        out = window_reverse(out.transpose(1, 2).reshape(-1, n, c), ws, hp, wp)
        out = out[:, shift : shift + h, shift : shift + w, :]
        return self.proj(out)
