"""Paired evaluation reports the grid seams each method adds (metrics.seam_excess) per image and per method."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from skimage import data

from cliphaze.evaluate import evaluate_pairs, write_rgb_image
from cliphaze.guidance_types import Guidance


class _Blocky:
    """A stand-in dehazer that leaves what a windowed network can: a constant offset per 8x8 block."""

    name = "blocky"
    device = torch.device("cpu")
    uses_guidance = False

    def encode_guidance(self, frames: torch.Tensor) -> Guidance:
        return Guidance()

    def restore(self, frames: torch.Tensor, guidance: Guidance | None, *, scale: float = 1.0) -> torch.Tensor:
        _, h, w, _ = frames.shape
        blocks = torch.from_numpy(np.random.default_rng(0).integers(-12, 13, (h // 8 + 1, w // 8 + 1)))
        grid = blocks.repeat_interleave(8, 0).repeat_interleave(8, 1)[:h, :w, None]
        return (frames.int() + grid).clamp(0, 255).to(torch.uint8)


def test_seams_of_a_blocky_method_stand_out_and_the_hazy_input_has_none(tmp_path: Path) -> None:
    clear = data.coffee()[100:228, 150:342]
    hazy = (clear * 0.6 + 90).astype(np.uint8)
    write_rgb_image(tmp_path / "h.png", hazy)
    write_rgb_image(tmp_path / "c.png", clear)
    report = evaluate_pairs([(tmp_path / "h.png", tmp_path / "c.png")], {"blocky": _Blocky()},
                            csv_path=tmp_path / "s.csv")
    assert report.summary["blocky"].seams_8 > 0.3
    assert all(abs(getattr(report.summary["hazy"], f"seams_{p}")) < 0.05 for p in (8, 16, 32))
    with (tmp_path / "s.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert float(rows[1]["seams_8"]) == report.summary["blocky"].seams_8


def test_images_too_small_for_a_32px_grid_get_nan(tmp_path: Path) -> None:
    clear = data.coffee()[:48, :60]
    write_rgb_image(tmp_path / "h.png", clear)
    write_rgb_image(tmp_path / "c.png", clear)
    report = evaluate_pairs([(tmp_path / "h.png", tmp_path / "c.png")], {})
    assert math.isnan(report.summary["hazy"].seams_8)


def test_the_processing_scale_reaches_every_dehazer(tmp_path: Path) -> None:
    seen = []

    class _Recorder(_Blocky):
        def restore(self, frames, guidance, *, scale: float = 1.0):
            seen.append(scale)
            return frames

    clear = data.coffee()[:80, :96]
    write_rgb_image(tmp_path / "h.png", clear)
    write_rgb_image(tmp_path / "c.png", clear)
    evaluate_pairs([(tmp_path / "h.png", tmp_path / "c.png")], {"a": _Recorder(), "b": _Recorder()}, scale=0.5)
    assert seen == [0.5, 0.5]
