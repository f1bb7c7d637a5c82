"""Forward passes through an open_clip ``VisionTransformer`` that guidance needs and open_clip lacks.

Written against the tower's public sub-modules (``conv1``, ``class_embedding``, ``positional_embedding``,
``ln_pre``, ``transformer.resblocks``, ``ln_post``, ``proj``), not its private helpers, so that:

* DA-CLIP's controller pass can collect per-block hiddens and the controlled pass can add them (spec 5.1);
* every output token (class + patches) can be taken after ``ln_post`` and ``proj`` (spec 2.5.1, 2.6.1);
* inputs larger or non-square relative to the trained size work: the patch position embeddings are
  resampled (bicubic) to the input's patch grid, as open_clip does when it loads a checkpoint at a new size.

Token layout is batch-first (B, L, W) throughout; L = 1 + gh * gw.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cliphaze.clip.errors import UnsupportedTowerError

if TYPE_CHECKING:
    from torch import nn

# Class tokens in front of the patch tokens of an open_clip ViT.
NUM_PREFIX_TOKENS = 1


def check_vision_tower(visual: nn.Module) -> None:
    """Raise :class:`UnsupportedTowerError` unless ``visual`` is a plain open_clip ViT with a projection."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise UnsupportedTowerError(
            f"guidance needs an open_clip VisionTransformer image tower, got {type(visual).__name__}"
        )
    if visual.attn_pool is not None or visual.proj is None:
        raise UnsupportedTowerError(
            "guidance needs a ViT with class-token pooling and a projection (no attention pooler)"
        )


def grid_size(visual: nn.Module, height_px: int, width_px: int) -> tuple[int, int]:
    """Patch grid (gh, gw) of an input of the given size."""
    ph, pw = visual.patch_size
    return height_px // ph, width_px // pw


def _position_embedding(visual: nn.Module, grid: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """(1 + gh * gw, W) position embedding; patch part resampled when the grid differs from training."""
    pos = visual.positional_embedding
    if tuple(grid) == tuple(visual.grid_size):
        return pos.to(dtype)
    gh0, gw0 = visual.grid_size
    prefix, patches = pos[:NUM_PREFIX_TOKENS], pos[NUM_PREFIX_TOKENS:]
    patches = patches.reshape(1, gh0, gw0, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False, antialias=True)
    patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([prefix.float(), patches]).to(dtype)


def embed(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Patchify, prepend the class token, add position embeddings, ``ln_pre``.

    Args:
        images: (B, 3, H, W) CLIP-normalised, H and W multiples of the patch size.

    Returns:
        (B, 1 + gh * gw, W) tokens.
    """
    x = visual.conv1(images)  # (B, W, gh, gw)
    grid = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)  # (B, gh * gw, W)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + _position_embedding(visual, grid, x.dtype)
    return visual.ln_pre(x)


def run_blocks(
    visual: nn.Module,
    x: torch.Tensor,
    *,
    zero_modules: nn.ModuleList | None = None,
    control: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the transformer blocks, optionally collecting or adding DA-CLIP control hiddens.

    Args:
        x: (B, L, W) tokens from :func:`embed`.
        zero_modules: one Linear(W, W) per block; when given, ``h_i = zero_i(block_i output)`` is collected
            (DA-CLIP ``ControlTransformer``).
        control: hiddens to inject; after block i the LAST remaining hidden is popped and added
            (``x = x + control.pop()``), so block 0 gets ``h_{L-1}`` and the list is consumed, exactly as in
            DA-CLIP's ``Transformer.forward``.

    Returns:
        (B, L, W) tokens after the last block, and the collected hiddens (empty without ``zero_modules``).
    """
    blocks = visual.transformer.resblocks
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    hiddens: list[torch.Tensor] = []
    for i, block in enumerate(blocks):
        x = block(x)
        if zero_modules is not None:
            hiddens.append(zero_modules[i](x))
        if control is not None:
            x = x + control.pop()
    if not batch_first:
        x = x.transpose(0, 1)
        hiddens = [h.transpose(0, 1) for h in hiddens]
    return x, hiddens


def pool(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled, projected image features (B, D) from (B, L, W) block outputs (open_clip ``_pool`` + proj)."""
    if visual.final_ln_after_pool:
        pooled = x[:, NUM_PREFIX_TOKENS:].mean(dim=1) if visual.pool_type == "avg" else x[:, 0]
        pooled = visual.ln_post(pooled)
    else:
        x = visual.ln_post(x)
        pooled = x[:, NUM_PREFIX_TOKENS:].mean(dim=1) if visual.pool_type == "avg" else x[:, 0]
    return pooled @ visual.proj


def project_tokens(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """All tokens in the joint space: ``ln_post(x) @ proj``, (B, L, W) -> (B, L, D)."""
    return visual.ln_post(x) @ visual.proj


def encode_tokens(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Plain (uncontrolled) pass: (B, 3, H, W) CLIP input -> (B, 1 + gh * gw, D) projected tokens."""
    x, _ = run_blocks(visual, embed(visual, images))
    return project_tokens(visual, x)
