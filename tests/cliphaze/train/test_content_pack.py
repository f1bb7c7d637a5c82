"""Content packs: photos with a manifest, split into trained and never-trained held-out photos."""

from __future__ import annotations

import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from cliphaze.train.content import (
    PACK_REPEATS,
    ContentPackError,
    DefaultContent,
    PackImage,
    add_content_pack,
    load_content_pack,
    write_content_pack,
)


def write_pack(path: Path, splits: dict[str, str], size: tuple[int, int] = (40, 56)) -> None:
    """A pack of smooth random photos (name -> split)."""
    rng = np.random.default_rng(0)
    images = []
    for name, split in splits.items():
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = cv2.resize(small, size[::-1], interpolation=cv2.INTER_CUBIC)
        images.append(PackImage(name=name, split=split, image=image, source={"licence": "CC0-1.0"}))
    write_content_pack(path, images, {"test": "1"})


def test_pack_loads_both_splits_as_rgb(tmp_path: Path) -> None:
    write_pack(tmp_path / "p.tar", {"a": "train", "b": "train", "c": "val"})
    pack = load_content_pack(tmp_path / "p.tar")
    assert sorted(pack.train) == ["a", "b"] and sorted(pack.val) == ["c"]
    assert all(im.shape == (40, 56, 3) and im.dtype == np.uint8 for im in [*pack.train.values(), *pack.val.values()])
    assert pack.manifest["images"][0]["licence"] == "CC0-1.0"


def test_added_pack_trains_on_train_photos_only_and_holds_out_val(tmp_path: Path) -> None:
    write_pack(tmp_path / "p.tar", {"a": "train", "c": "val"})
    base = DefaultContent(train=[np.zeros((8, 8, 3), np.uint8)], val={"coffee": np.ones((8, 8, 3), np.uint8)},
                          train_names=["skimage:x"])
    pack = load_content_pack(tmp_path / "p.tar")
    merged = add_content_pack(base, pack)
    assert len(merged.train) == 1 + PACK_REPEATS and merged.train_names == ["skimage:x", "pack:a"]
    assert sorted(merged.val) == ["coffee", "pack_c"]
    assert not any(np.array_equal(t, pack.val["c"]) for t in merged.train)


def test_bad_packs_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    with pytest.raises(ContentPackError):
        load_content_pack(tmp_path / "junk.tar")
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    with pytest.raises(ContentPackError, match="manifest"):
        load_content_pack(tmp_path / "empty.tar")
