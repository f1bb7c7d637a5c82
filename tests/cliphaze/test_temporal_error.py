"""Flicker: metrics.temporal_error, and the drifting synthetic haze it is measured on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cliphaze.metrics import MetricError, temporal_error
from cliphaze.train.synthetic import HazeConfig, drifting_haze, recover_clear


def _clip(frames: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.random((1, 24, 32, 3))
    return np.clip(base + 0.01 * np.arange(frames)[:, None, None, None], 0, 1)  # slow brightening, like a pan


def test_a_restoration_that_changes_like_the_clean_video_has_no_flicker() -> None:
    clean = _clip()
    assert temporal_error(list(clean), list(clean)) == 0.0
    assert temporal_error(list(np.clip(clean * 0.8 + 0.1, 0, 1)), list(clean)) < 0.005  # constant error cancels


def test_frame_to_frame_jumps_count_and_grow_with_their_size() -> None:
    clean = _clip()
    jumps = np.array([0.0, 0.02, -0.02, 0.02, -0.02, 0.02])[:, None, None, None]
    small = temporal_error(list(clean + jumps), list(clean))
    large = temporal_error(list(clean + 2 * jumps), list(clean))
    assert small == pytest.approx((0.02 + 4 * 0.04) / 5) and large == pytest.approx(2 * small)


def test_mismatched_videos_are_rejected() -> None:
    with pytest.raises(MetricError):
        temporal_error(list(_clip(3)), list(_clip(4)))
    with pytest.raises(MetricError):
        temporal_error(list(_clip(1)), list(_clip(1)))


def test_drifting_haze_moves_smoothly_and_inverts_exactly() -> None:
    clear = torch.from_numpy(_clip(8)).permute(0, 3, 1, 2).float()
    sample = drifting_haze(clear, torch.Generator().manual_seed(0), HazeConfig(), drift_px_per_frame=(0.5, 0.0))
    assert sample.hazy.shape == clear.shape and sample.transmission.shape == (8, 1, 24, 32)
    t = sample.transmission
    assert not torch.equal(t[0], t[-1])  # it drifts ...
    assert (t[1:] - t[:-1]).abs().mean() < 0.25 * (t[-1] - t[0]).abs().mean()  # ... smoothly
    assert torch.allclose(recover_clear(sample.hazy, t, sample.airlight), clear, atol=1e-5)
