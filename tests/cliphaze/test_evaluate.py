"""Paired evaluation reports the library's PSNR/SSIM for every method; video mode scores frames."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cliphaze.baselines.dcp import DarkChannelDehazer
from cliphaze.evaluate import EvaluationError, evaluate_pairs, evaluate_video, read_rgb_image, write_rgb_image
from cliphaze.guidance_types import Guidance


class _Brighten:
    """A known transformation standing in for a dehazer: adds 10 to every pixel."""

    name = "brighten"
    device = torch.device("cpu")
    uses_guidance = False

    def encode_guidance(self, frames: torch.Tensor) -> Guidance:
        return Guidance()

    def restore(self, frames: torch.Tensor, guidance: Guidance | None, *, scale: float = 1.0) -> torch.Tensor:
        return (frames.int() + 10).clamp(0, 255).to(torch.uint8)


@pytest.fixture()
def pairs(tmp_path: Path) -> list[tuple[Path, Path]]:
    out = []
    for i, clear in enumerate([data.chelsea()[:96, :128], data.coffee()[100:180, 200:300]]):
        hazy = (clear * 0.6 + 90).astype(np.uint8)
        write_rgb_image(tmp_path / "hazy" / f"{i}.png", hazy)
        write_rgb_image(tmp_path / "clear" / f"{i}.png", clear)
        out.append((tmp_path / "hazy" / f"{i}.png", tmp_path / "clear" / f"{i}.png"))
    return out


def test_scores_equal_library_values(pairs, tmp_path: Path) -> None:
    report = evaluate_pairs(pairs, {"brighten": _Brighten(), "dcp": DarkChannelDehazer("cpu")},
                            csv_path=tmp_path / "scores.csv", grid_path=tmp_path / "grid.png")
    assert set(report.summary) == {"hazy", "brighten", "dcp"}
    for (hazy_path, clear_path), name in zip(pairs, ["0.png", "1.png"]):
        hazy, clear = read_rgb_image(hazy_path), read_rgb_image(clear_path)
        bright = np.clip(hazy.astype(int) + 10, 0, 255).astype(np.uint8)
        rows = {s.method: s for s in report.scores if s.image == name}
        for method, image in (("hazy", hazy), ("brighten", bright)):
            assert rows[method].psnr_db == pytest.approx(peak_signal_noise_ratio(clear, image), abs=1e-9)
            ref = structural_similarity(clear, image, channel_axis=-1, data_range=255, gaussian_weights=True,
                                        sigma=1.5, use_sample_covariance=False)
            assert rows[method].ssim == pytest.approx(ref, abs=1e-9)
    hazy_rows = [s.psnr_db for s in report.scores if s.method == "hazy"]
    assert report.summary["hazy"].psnr_db == pytest.approx(np.mean(hazy_rows))
    with (tmp_path / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and rows[0]["method"] == "hazy"
    grid = read_rgb_image(tmp_path / "grid.png")
    assert grid.shape[0] > 2 * 192  # two rows of tiles


def test_missing_pairs_and_size_mismatch(tmp_path: Path, pairs) -> None:
    with pytest.raises(EvaluationError, match="no image pairs"):
        evaluate_pairs([], {})
    write_rgb_image(tmp_path / "small.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(EvaluationError, match="size mismatch"):
        evaluate_pairs([(pairs[0][0], tmp_path / "small.png")], {})


def test_video_no_reference_mode(tmp_path: Path) -> None:
    clear = data.coffee()[:128, :192].astype(np.float64)
    frames = [(i, (clear * 0.5 + 110 + i).astype(np.uint8)) for i in (0, 2, 4)]
    report = evaluate_video(DarkChannelDehazer("cpu"), frames, csv_path=tmp_path / "v.csv")
    assert [f.index for f in report.frames] == [0, 2, 4]
    assert report.means["dark_channel_after"] < report.means["dark_channel_before"]
    assert report.means["contrast_after"] > report.means["contrast_before"]
    assert "density_before" not in report.means  # dcp computes no CLIP density
    assert (tmp_path / "v.csv").read_text().count("\n") == 4
    with pytest.raises(EvaluationError, match="no video frames"):
        evaluate_video(DarkChannelDehazer("cpu"), [])
