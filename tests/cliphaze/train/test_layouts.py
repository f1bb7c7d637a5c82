"""Dataset layout detection on tiny generated trees, one per layout, and the no-match error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cliphaze.evaluate import write_rgb_image
from cliphaze.train.layouts import DatasetLayoutError, detect_layout, split_layout


def _img(path: Path, value: int = 0) -> None:
    write_rgb_image(path, np.full((8, 10, 3), value, np.uint8))


def test_paired_folders_match_by_name_with_gt_folder(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        _img(tmp_path / "hazy" / f"{name}.png")
        _img(tmp_path / "GT" / f"{name}.jpg")  # extension may differ
    _img(tmp_path / "GT" / "unused.png")
    layout = detect_layout(tmp_path)
    assert layout.name == "paired-folders"
    assert [(p.hazy.stem, p.clear.name) for p in layout.pairs] == [("a", "a.jpg"), ("b", "b.jpg"), ("c", "c.jpg")]


def test_reside_naming_maps_many_hazy_to_one_clear(tmp_path: Path) -> None:
    for scene in ("1400", "1401"):
        _img(tmp_path / "clear" / f"{scene}.png")
        for k in (1, 2, 10):
            _img(tmp_path / "hazy" / f"{scene}_{k}_0.9.png")
    layout = detect_layout(tmp_path)
    assert layout.name == "reside"
    assert len(layout.pairs) == 6
    assert all(p.clear.stem == p.hazy.stem.split("_")[0] for p in layout.pairs)
    train, val = split_layout(layout, 0.5, seed=0)
    # one scene on each side: a clear image never appears in both
    assert {p.clear for p in train}.isdisjoint({p.clear for p in val})
    assert len(train) == len(val) == 3


@pytest.mark.parametrize("split", [False, True])
def test_ntire_naming_flat_and_split(tmp_path: Path, split: bool) -> None:
    for n in ("01", "02", "03"):
        if split:
            _img(tmp_path / "hazy" / f"{n}_hazy.png")
            _img(tmp_path / "GT" / f"{n}_GT.png")
        else:
            _img(tmp_path / f"{n}_outdoor_hazy.jpg")
            _img(tmp_path / f"{n}_outdoor_GT.jpg")
    layout = detect_layout(tmp_path)
    assert layout.name == "ntire"
    assert len(layout.pairs) == 3
    for p in layout.pairs:
        assert p.hazy.stem.lower().replace("hazy", "") == p.clear.stem.lower().replace("gt", "")


def test_video_frame_folders_and_contiguous_val_range(tmp_path: Path) -> None:
    for video in ("v1", "v2"):
        for i in range(20):
            _img(tmp_path / "hazy" / video / f"{i:04d}.png")
            _img(tmp_path / "clear" / video / f"{i:04d}.png")
    layout = detect_layout(tmp_path)
    assert layout.name == "video-frames"
    assert {p.group for p in layout.pairs} == {"v1", "v2"}
    train, val = split_layout(layout, 0.25, seed=0)
    for video in ("v1", "v2"):
        val_idx = sorted(int(p.hazy.stem) for p in val if p.group == video)
        train_idx = sorted(int(p.hazy.stem) for p in train if p.group == video)
        assert val_idx == list(range(15, 20))  # the last quarter, contiguous
        assert max(train_idx) < 15 - 1  # a guard band separates the ranges


def test_no_layout_error_lists_what_was_found(tmp_path: Path) -> None:
    _img(tmp_path / "photos" / "x.png")
    _img(tmp_path / "y.png")
    with pytest.raises(DatasetLayoutError) as info:
        detect_layout(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "photos/" in message and "y.png" in message and "expected hazy/" in message


def test_incomplete_pairs_are_not_a_layout(tmp_path: Path) -> None:
    _img(tmp_path / "hazy" / "a.png")
    _img(tmp_path / "hazy" / "orphan.png")
    _img(tmp_path / "clear" / "a.png")
    with pytest.raises(DatasetLayoutError, match="no known dataset layout"):
        detect_layout(tmp_path)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="not found"):
        detect_layout(tmp_path / "nope")
