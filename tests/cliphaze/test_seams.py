"""The grid-seam metric: an injected block grid scores high, a smooth or already-gridded-alike image about 0."""

from __future__ import annotations

import numpy as np
import pytest

from cliphaze.metrics import MetricError, grid_seam_ratio, seam_excess


def _smooth(seed: int = 0, size: tuple[int, int] = (160, 224)) -> np.ndarray:
    import cv2

    small = np.random.default_rng(seed).random((6, 8, 3))
    big = cv2.resize(small, size[::-1], interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(seed + 1).normal(0, 0.01, big.shape)  # texture at every phase
    return np.clip(big + noise, 0, 1)


def _with_grid(image: np.ndarray, period: int, step: float) -> np.ndarray:
    """Add a per-block constant offset: a step at every period-px block border (what a windowed net leaves)."""
    h, w = image.shape[:2]
    rng = np.random.default_rng(7)
    blocks = rng.uniform(-step, step, (h // period + 1, w // period + 1, 1))
    offsets = np.repeat(np.repeat(blocks, period, 0), period, 1)[:h, :w]
    return np.clip(image + offsets, 0, 1)


def test_injected_8px_grid_scores_high_at_8_16_and_32() -> None:
    clean = _smooth()
    excess = seam_excess(_with_grid(clean, 8, 0.05), clean)
    assert excess[8] > 0.5
    assert excess[16] > 0.5 and excess[32] > 0.5  # every 16th / 32nd boundary is an 8 px boundary too


def test_16px_grid_is_not_an_8px_grid() -> None:
    clean = _smooth(3)
    excess = seam_excess(_with_grid(clean, 16, 0.05), clean)
    assert excess[16] > 0.5 and excess[32] > 0.5
    assert excess[8] < 0.75 * excess[16]


def test_smooth_images_and_uint8_copies_score_about_zero() -> None:
    clean = _smooth(1)
    assert abs(grid_seam_ratio(clean, 8) - 1.0) < 0.1
    restored = np.clip(clean * 0.9 + 0.05, 0, 1)  # a global colour change adds no grid
    assert all(abs(v) < 0.02 for v in seam_excess(restored, clean).values())
    as_uint8 = (clean * 255).round().astype(np.uint8)
    assert all(abs(v) < 0.02 for v in seam_excess(as_uint8, clean).values())


def test_a_grid_in_the_clean_photo_itself_cancels() -> None:
    gridded = _with_grid(_smooth(2), 8, 0.02)
    assert all(abs(v) < 1e-9 for v in seam_excess(gridded, gridded).values())


def test_too_small_images_are_rejected() -> None:
    with pytest.raises(MetricError):
        grid_seam_ratio(np.zeros((40, 40, 3)), 32)
