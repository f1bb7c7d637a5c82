"""Metrics equal the maintained libraries' values; no-reference scores move the right way with haze."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_msssim import ssim as ms_ssim
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cliphaze.metrics import (
    MetricError,
    dark_channel,
    no_reference_scores,
    psnr,
    ssim,
    ssim_dehazeformer,
    ssim_dehazeformer_image,
)


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    clear = data.astronaut()[::2, ::2]
    noisy = np.clip(clear.astype(int) + np.random.default_rng(0).integers(-20, 21, clear.shape), 0, 255).astype(np.uint8)
    return noisy, clear


def test_psnr_equals_skimage(pair) -> None:
    noisy, clear = pair
    assert psnr(noisy, clear) == pytest.approx(peak_signal_noise_ratio(clear, noisy), abs=1e-9)
    mse = np.mean((noisy / 255.0 - clear / 255.0) ** 2)
    assert psnr(noisy, clear) == pytest.approx(10 * math.log10(1 / mse), abs=1e-9)
    assert psnr(noisy.astype(np.float32) / 255, clear.astype(np.float32) / 255) == pytest.approx(psnr(noisy, clear), abs=1e-4)
    assert psnr(clear, clear) == math.inf


def test_ssim_equals_skimage(pair) -> None:
    noisy, clear = pair
    expected = structural_similarity(clear, noisy, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert ssim(noisy, clear) == pytest.approx(expected, abs=1e-9)
    assert ssim(clear, clear) == pytest.approx(1.0)


def test_ssim_dehazeformer_equals_pytorch_msssim_with_pooling(pair) -> None:
    noisy, clear = pair  # 256 x 256: r = 1, no pooling
    to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    assert ssim_dehazeformer_image(noisy, clear) == pytest.approx(float(ms_ssim(to_t(noisy), to_t(clear), data_range=1)),
                                                                   abs=1e-6)
    big_n, big_c = to_t(np.tile(noisy, (2, 3, 1))), to_t(np.tile(clear, (2, 3, 1)))  # 512 x 768: r = 2
    pooled = ms_ssim(torch.nn.functional.adaptive_avg_pool2d(big_n, (256, 384)),
                     torch.nn.functional.adaptive_avg_pool2d(big_c, (256, 384)), data_range=1)
    assert float(ssim_dehazeformer(big_n, big_c)[0]) == pytest.approx(float(pooled), abs=1e-6)


def test_shape_mismatch_is_an_error(pair) -> None:
    with pytest.raises(MetricError, match="shape mismatch"):
        psnr(pair[0][:10], pair[1])


def test_no_reference_scores_detect_haze() -> None:
    clear = data.coffee()
    hazy = (clear * 0.5 + 0.45 * 255).astype(np.uint8)
    before, after = no_reference_scores(hazy), no_reference_scores(clear)
    assert before.dark_channel > after.dark_channel
    assert before.contrast < after.contrast
    assert before.colourfulness < after.colourfulness
    # dark channel: a white image is 1 everywhere, an image with a black pixel in each patch is 0
    assert float(dark_channel(np.full((20, 20, 3), 255, np.uint8)).min()) == 1.0
    grid = np.full((30, 30, 3), 255, np.uint8)
    grid[::5, ::5, 2] = 0
    assert float(dark_channel(grid).max()) == 0.0
