"""Reflect-pad feature maps to a multiple of a size and crop them back (DehazeFormer check_image_size).

``F.pad(mode="reflect")`` needs the pad to be smaller than the side; tiny inputs (down to 1x1) are
padded by repeated reflection and, for a side of 1, by replication, so any H x W works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pad_side(x: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    """Reflect-pad one spatial dim (-1: width, -2: height) by ``before``/``after`` pixels."""
    while before > 0 or after > 0:
        size = x.shape[dim]
        if size == 1:  # nothing to reflect: replicate the single row/column
            pad = (before, after, 0, 0) if dim == -1 else (0, 0, before, after)
            return F.pad(x, pad, mode="replicate")
        b, a = min(before, size - 1), min(after, size - 1)
        pad = (b, a, 0, 0) if dim == -1 else (0, 0, b, a)
        x = F.pad(x, pad, mode="reflect")
        before, after = before - b, after - a
    return x


def reflect_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Reflect padding of (B, C, H, W) that works for any size (repeated reflection, replication at 1 px)."""
    if top == bottom == left == right == 0:
        return x
    h, w = x.shape[-2:]
    if top < h and bottom < h and left < w and right < w:
        return F.pad(x, (left, right, top, bottom), mode="reflect")
    x = _pad_side(x, left, right, -1)
    return _pad_side(x, top, bottom, -2)


def pad_amount(size: int, multiple: int) -> int:
    """Pixels to add to ``size`` to reach the next multiple of ``multiple``."""
    return (multiple - size % multiple) % multiple


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad the bottom/right of x (B, C, H, W) so H and W are multiples of ``multiple``.

    Returns:
        The padded tensor (B, C, H', W') and the original (H, W) for :func:`crop_to`.
    """
    h, w = x.shape[-2:]
    return reflect_pad(x, 0, pad_amount(h, multiple), 0, pad_amount(w, multiple)), (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int], offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Crop (..., H', W') to (..., h, w) starting at ``offset`` (top, left)."""
    top, left = offset
    return x[..., top : top + size[0], left : left + size[1]]
