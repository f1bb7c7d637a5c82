"""Datasets: deterministic by (seed, position), crops/flips shared by hazy and clear, epochs permute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cliphaze.evaluate import write_rgb_image
from cliphaze.train.data import (
    AugmentConfig,
    EpochPermutation,
    PairedImageDataset,
    PositionSampler,
    SyntheticHazeDataset,
    to_rgb_uint8,
)
from cliphaze.train.layouts import detect_layout
from cliphaze.train.synthetic import HazeConfig, recover_clear


def _pairs(tmp_path: Path, n: int = 3):
    rng = np.random.default_rng(0)
    for i in range(n):
        clear = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
        write_rgb_image(tmp_path / "clear" / f"{i}.png", clear)
        write_rgb_image(tmp_path / "hazy" / f"{i}.png", (clear // 2 + 100).astype(np.uint8))
    return detect_layout(tmp_path).pairs


def test_epoch_permutation_visits_each_item_once_per_epoch() -> None:
    order = EpochPermutation(5, seed=3)
    first = [order(k) for k in range(5)]
    second = [order(k) for k in range(5, 10)]
    assert sorted(first) == sorted(second) == list(range(5))
    assert first != second or first != [order(k) for k in range(10, 15)]


def test_paired_dataset_same_augmentation_for_hazy_and_clear(tmp_path: Path) -> None:
    ds = PairedImageDataset(_pairs(tmp_path), AugmentConfig(crop_px=16, hflip=True, vflip=True, rot90=True), seed=1)
    for position in range(6):
        item = ds[position]
        assert item["hazy"].shape == item["clear"].shape == (3, 16, 16)
        # the hazy images were made as clear // 2 + 100: the same crop/flip keeps that relation
        expected = (torch.floor(item["clear"] * 255 / 2) + 100) / 255
        torch.testing.assert_close(item["hazy"], expected, atol=1e-6, rtol=0)
    a, b = ds[4], PairedImageDataset(ds.pairs, ds.augment_config, seed=1)[4]
    assert torch.equal(a["hazy"], b["hazy"])


def test_synthetic_dataset_is_deterministic_and_recoverable() -> None:
    images = [np.random.default_rng(i).integers(0, 256, (20, 28), dtype=np.uint8) for i in range(3)]  # grey
    ds = SyntheticHazeDataset(images, AugmentConfig(crop_px=32), HazeConfig(), seed=5)
    item = ds[7]
    assert item["hazy"].shape == (3, 32, 32)  # grey -> RGB, upscaled to fit the crop
    torch.testing.assert_close(recover_clear(item["hazy"], item["transmission"], item["airlight"]), item["clear"],
                               atol=2e-6, rtol=0)
    again = SyntheticHazeDataset(images, AugmentConfig(crop_px=32), HazeConfig(), seed=5)[7]
    assert torch.equal(item["hazy"], again["hazy"])
    other = SyntheticHazeDataset(images, AugmentConfig(crop_px=32), HazeConfig(), seed=6)[7]
    assert not torch.equal(item["hazy"], other["hazy"])


@pytest.mark.parametrize("field_side_px", [160, None])
def test_synthetic_haze_is_drawn_at_image_scale(field_side_px: int | None) -> None:
    # Homogeneous haze over a pure vertical depth gradient, beta fixed at 2: over a whole photo t spans
    # exp(-2)..1. A 64-px crop of a 512-px-tall image hazed at image scale spans only ~1/8 of that depth
    # range; hazing the crop as if it were a photo (the old behaviour) spans all of it.
    haze = HazeConfig(kinds=("homogeneous",), beta_range=(2.0, 2.0), gradient_weight=(1.0, 1.0),
                      brightness_weight=(0.0, 0.0), max_tilt=0.0)
    images = [np.full((512, 384, 3), 128, np.uint8)]
    ds = SyntheticHazeDataset(images, AugmentConfig(crop_px=64, hflip=False), haze, seed=0, field_side_px=field_side_px)
    for position in range(4):
        item = ds[position]
        log_t = item["transmission"].log()
        depth_span = float(log_t.max() - log_t.min()) / 2.0
        if field_side_px is None:
            assert depth_span > 0.9
        else:
            assert 0.05 < depth_span < 0.2  # 64 / 512 = 0.125 of the depth range
            torch.testing.assert_close(recover_clear(item["hazy"], item["transmission"], item["airlight"]),
                                       item["clear"], atol=2e-6, rtol=0)


def test_loader_workers_give_the_same_stream_as_in_process() -> None:
    images = [np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8) for i in range(4)]
    ds = SyntheticHazeDataset(images, AugmentConfig(crop_px=16), HazeConfig(), seed=0)
    serial = [b["hazy"] for b in DataLoader(ds, batch_size=2, sampler=PositionSampler(6, 4))]
    resumed = [b["hazy"] for b in DataLoader(ds, batch_size=2, sampler=PositionSampler(8, 2), num_workers=1)]
    assert torch.equal(serial[1], resumed[0])


def test_to_rgb_uint8_handles_skimage_kinds() -> None:
    assert to_rgb_uint8(np.ones((4, 5), bool)).shape == (4, 5, 3)
    assert to_rgb_uint8(np.full((4, 5), 0.5)).max() == 128
    assert to_rgb_uint8(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
