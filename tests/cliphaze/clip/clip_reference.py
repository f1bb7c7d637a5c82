"""Independent reference: a ViT / DA-CLIP forward written from the raw official state dict with torch ops only.

Nothing here uses open_clip or cliphaze modules; it is the ground truth the implementation is checked against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LN_EPS = 1e-5  # nn.LayerNorm default, as used by open_clip


def _ln(x: torch.Tensor, sd: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), sd[prefix + "weight"], sd[prefix + "bias"], LN_EPS)


def _block(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str, heads: int) -> torch.Tensor:
    b, n, w = x.shape
    h = _ln(x, sd, p + "ln_1.")
    qkv = h @ sd[p + "attn.in_proj_weight"].t() + sd[p + "attn.in_proj_bias"]
    q, k, v = (t.reshape(b, n, heads, w // heads).transpose(1, 2) for t in qkv.split(w, dim=-1))
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(w // heads), dim=-1) @ v
    att = att.transpose(1, 2).reshape(b, n, w) @ sd[p + "attn.out_proj.weight"].t() + sd[p + "attn.out_proj.bias"]
    x = x + att
    h = _ln(x, sd, p + "ln_2.")
    h = F.gelu(h @ sd[p + "mlp.c_fc.weight"].t() + sd[p + "mlp.c_fc.bias"])
    return x + h @ sd[p + "mlp.c_proj.weight"].t() + sd[p + "mlp.c_proj.bias"]


def manual_vit(sd: dict[str, torch.Tensor], prefix: str, blocks_prefix: str, images: torch.Tensor, heads: int,
               zero_prefix: str | None = None, control: list[torch.Tensor] | None = None, reverse: bool = True):
    """Returns (tokens after the last block (B, L, W), hiddens)."""
    weight = sd[prefix + "conv1.weight"]
    x = F.conv2d(images, weight, stride=weight.shape[-1]).flatten(2).transpose(1, 2)
    cls = sd[prefix + "class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd[prefix + "positional_embedding"]
    x = _ln(x, sd, prefix + "ln_pre.")
    layers = len({k.split(".")[0] for k in (s[len(blocks_prefix):] for s in sd if s.startswith(blocks_prefix))})
    hiddens = []
    for i in range(layers):
        x = _block(x, sd, f"{blocks_prefix}{i}.", heads)
        if zero_prefix is not None:
            hiddens.append(x @ sd[f"{zero_prefix}{i}.weight"].t() + sd[f"{zero_prefix}{i}.bias"])
        if control is not None:
            x = x + (control[layers - 1 - i] if reverse else control[i])
    return x, hiddens


def manual_daclip_reference(sd: dict[str, torch.Tensor], images: torch.Tensor, heads: int = 2, reverse: bool = True
                            ) -> dict[str, torch.Tensor]:
    """content / degradation / plain pooled features and the controlled pass's projected tokens."""
    with torch.no_grad():
        xc, hiddens = manual_vit(sd, "visual_control.", "visual_control.transformer.transformer.resblocks.", images,
                                 heads, zero_prefix="visual_control.transformer.zero_modules.")
        degradation = _ln(xc[:, 0], sd, "visual_control.ln_post.") @ sd["visual_control.proj"]
        xm, _ = manual_vit(sd, "clip.visual.", "clip.visual.transformer.resblocks.", images, heads,
                           control=hiddens, reverse=reverse)
        tokens = _ln(xm, sd, "clip.visual.ln_post.") @ sd["clip.visual.proj"]
        xp, _ = manual_vit(sd, "clip.visual.", "clip.visual.transformer.resblocks.", images, heads)
        plain = _ln(xp[:, 0], sd, "clip.visual.ln_post.") @ sd["clip.visual.proj"]
    return {"content": tokens[:, 0], "degradation": degradation, "plain": plain, "content_tokens": tokens}
