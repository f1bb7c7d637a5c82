"""SS2D's four-direction cross-scan and cross-merge (spec 2.3.2).

With row-major index ``l = i·W + j`` on an H×W grid:

* dir 0: row-major; dir 1: column-major (``l = j·H + i``); dir 2 / dir 3: dir 0 / dir 1 reversed.

For a 2×3 grid the directions visit row-major positions dir0 = [0 1 2 3 4 5], dir1 = [0 3 1 4 2 5],
dir2 = [5 4 3 2 1 0], dir3 = [5 2 4 1 3 0]. ``cross_merge`` maps every direction back to row-major
order and sums them, so ``cross_merge(cross_scan(x)) == 4·x`` (flattened).
"""

from __future__ import annotations

import torch

# Number of scan directions of SS2D.
NUM_DIRECTIONS = 4


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """Unfold a feature map into the four scan orders.

    Args:
        x: (B, C, H, W).

    Returns:
        xs: (B, 4, C, H·W); xs[:, k, :, l] is the l-th element visited by direction k.
    """
    batch, channels, height, width = x.shape
    length = height * width
    row_major = x.reshape(batch, channels, length)
    col_major = x.transpose(2, 3).reshape(batch, channels, length)
    forward = torch.stack((row_major, col_major), dim=1)  # (B, 2, C, L)
    return torch.cat((forward, forward.flip(-1)), dim=1)


def cross_merge(ys: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Fold the four direction outputs back to row-major order and sum them.

    Args:
        ys: (B, 4, C, L) in the orders produced by ``cross_scan``.
        height: H of the grid (needed: the column-major order depends on it).
        width: W of the grid.

    Returns:
        y: (B, C, L) in row-major order, ``y = ys0 + flip(ys2) + T(ys1) + T(flip(ys3))``.

    Raises:
        ValueError: wrong number of directions, or H·W does not match L.
    """
    batch, directions, channels, length = ys.shape
    if directions != NUM_DIRECTIONS:
        raise ValueError(f"cross_merge expects {NUM_DIRECTIONS} directions, got {directions}")
    if height * width != length:
        raise ValueError(f"grid {height}x{width} does not match sequence length {length}")
    forward = ys[:, :2] + ys[:, 2:].flip(-1)  # (B, 2, C, L): dir0+dir2 row-major, dir1+dir3 column-major
    col_to_row = forward[:, 1].reshape(batch, channels, width, height).transpose(2, 3).reshape(batch, channels, length)
    return forward[:, 0] + col_to_row


def to_scan_order(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-direction values at row-major positions -> each direction's scan order.

    Args:
        t: (B, 4, C, H·W); ``t[:, k, :, p]`` belongs to grid position ``p`` (row-major) of direction k.

    Returns:
        (B, 4, C, H·W) with ``out[:, k, :, l]`` the value at the l-th position direction k visits, so that
        per-pixel projections of ``x`` reordered this way equal the same projections of ``cross_scan(x)``.
    """
    batch, directions, channels, length = t.shape
    if directions != NUM_DIRECTIONS or height * width != length:
        raise ValueError(f"expected (B, {NUM_DIRECTIONS}, C, {height}*{width}), got {tuple(t.shape)}")
    grid = t.reshape(batch, directions, channels, height, width)
    col = grid[:, 1::2].transpose(-1, -2).reshape(batch, 2, channels, length)  # directions 1 and 3
    return torch.stack((t[:, 0], col[:, 0], t[:, 2].flip(-1), col[:, 1].flip(-1)), dim=1)
