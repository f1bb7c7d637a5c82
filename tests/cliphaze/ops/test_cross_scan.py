"""SS2D cross-scan / cross-merge: the spec's 2x3 index maps and exact inversion."""

from __future__ import annotations

import pytest
import torch

from cliphaze.ops import cross_merge, cross_scan


def test_index_maps_of_a_2x3_grid() -> None:
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    xs = cross_scan(x)
    assert xs.shape == (1, 4, 1, 6)
    expected = [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]
    assert xs[0, :, 0].long().tolist() == expected


@pytest.mark.parametrize("hw", [(2, 3), (3, 2), (1, 1), (1, 7), (5, 4), (6, 6)])
def test_merge_of_scan_is_four_times_input(hw: tuple[int, int]) -> None:
    height, width = hw
    x = torch.randn(2, 3, height, width)
    y = cross_merge(cross_scan(x), height, width)
    assert y.shape == (2, 3, height * width)
    torch.testing.assert_close(y, 4 * x.reshape(2, 3, -1), rtol=0, atol=0)


@pytest.mark.parametrize("direction", range(4))
def test_each_direction_is_inverted_exactly(direction: int) -> None:
    height, width = 3, 5
    x = torch.randn(1, 2, height, width)
    xs = cross_scan(x)
    only = torch.zeros_like(xs)
    only[:, direction] = xs[:, direction]
    torch.testing.assert_close(cross_merge(only, height, width), x.reshape(1, 2, -1), rtol=0, atol=0)


def test_merge_rejects_wrong_grid_or_direction_count() -> None:
    ys = torch.zeros(1, 4, 2, 6)
    with pytest.raises(ValueError, match="does not match"):
        cross_merge(ys, 4, 2)
    with pytest.raises(ValueError, match="directions"):
        cross_merge(torch.zeros(1, 3, 2, 6), 2, 3)
