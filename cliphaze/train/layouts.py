"""Find hazy/clear image pairs in the folder layouts dehazing datasets ship in.

Supported layouts (auto-detected, in this order):

* ``paired-folders``: ``hazy/`` next to ``clear/`` (or ``GT/``, ``gt/``, ``clean/``), matched by file
  name (extensions may differ).
* ``reside``: the same folders with RESIDE naming (ITS / OTS / SOTS): the clear id is the prefix of the
  hazy name before the first ``_`` (``1400_1.png`` and ``1400_2.png`` -> ``1400.png``).
* ``ntire``: NTIRE naming (O-HAZE, I-HAZE, Dense-Haze, NH-HAZE): ``NN_hazy`` <-> ``NN_GT`` (also
  ``NN_outdoor_hazy`` <-> ``NN_outdoor_GT``), in one folder or split into ``hazy/`` + ``GT/``.
* ``video-frames``: frame folders of videos, ``hazy/<video>/<frame>`` <-> ``clear/<video>/<frame>``.

A folder that matches none of them raises :class:`DatasetLayoutError` with one line listing what was
found.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
HAZY_DIR_NAMES = ("hazy", "haze", "input", "inputs")
CLEAR_DIR_NAMES = ("clear", "gt", "clean", "target", "targets")
NTIRE_HAZY = re.compile(r"^(?P<id>.+?)_hazy$", re.IGNORECASE)
NTIRE_CLEAR = re.compile(r"^(?P<id>.+?)_gt$", re.IGNORECASE)
# How many names an error message shows before "...".
MAX_LISTED = 6
# Frames left out between the train and val ranges of a video (neighbouring frames are near-duplicates).
VIDEO_GUARD_FRAMES = 5


class DatasetLayoutError(ValueError):
    """A dataset folder whose layout is not recognised, or whose pairs are incomplete."""


@dataclass(frozen=True)
class ImagePair:
    """One hazy image and its ground truth.

    Attributes:
        hazy: path of the hazy image.
        clear: path of the clear (ground-truth) image.
        group: what the pair belongs to: the video folder for ``video-frames``, the clear id otherwise
            (several RESIDE hazy images share one clear id). Splits keep a group together.
    """

    hazy: Path
    clear: Path
    group: str


@dataclass(frozen=True)
class PairedLayout:
    """A recognised dataset: its layout name and pairs sorted by hazy path."""

    name: str
    root: Path
    pairs: tuple[ImagePair, ...]


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _find_dir(root: Path, names: Iterable[str]) -> Path | None:
    wanted = {n.lower() for n in names}
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() in wanted:
            return child
    return None


def _key(path: Path, base: Path, stem: str) -> str:
    """Relative folder + transformed stem, the matching key of one file."""
    rel_dir = path.parent.relative_to(base).as_posix()
    return f"{rel_dir}/{stem}" if rel_dir != "." else stem


def _index(files: list[Path], base: Path, stem_of: Callable[[str], str | None]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        stem = stem_of(f.stem)
        if stem is not None:
            out.setdefault(_key(f, base, stem), f)
    return out


def _same(stem: str) -> str | None:
    return stem


def _reside_id(stem: str) -> str | None:
    return stem.split("_", 1)[0]


def _ntire_id(pattern: re.Pattern[str]) -> Callable[[str], str | None]:
    def stem_of(stem: str) -> str | None:
        m = pattern.match(stem)
        return m.group("id") if m else None

    return stem_of


def _match(
    hazy_files: list[Path],
    hazy_base: Path,
    clear_files: list[Path],
    clear_base: Path,
    hazy_key: Callable[[str], str | None],
    clear_key: Callable[[str], str | None],
) -> list[ImagePair] | None:
    """All hazy files paired with a clear file, or None if any hazy file has no partner."""
    clear_index = _index(clear_files, clear_base, clear_key)
    pairs = []
    for h in hazy_files:
        stem = hazy_key(h.stem)
        if stem is None:
            return None
        key = _key(h, hazy_base, stem)
        c = clear_index.get(key)
        if c is None:
            return None
        pairs.append(ImagePair(hazy=h, clear=c, group=key))
    return pairs or None


def _match_folders(root: Path, hazy_dir: Path, clear_dir: Path) -> PairedLayout | None:
    hazy_files = list_images(hazy_dir)
    clear_files = list_images(clear_dir)
    if not hazy_files or not clear_files:
        return None
    nested = any(p.parent != hazy_dir for p in hazy_files)
    pairs = _match(hazy_files, hazy_dir, clear_files, clear_dir, _same, _same)
    if pairs is not None:
        if nested:
            # Frames of one video form one group, so a split never leaks neighbouring frames.
            grouped = [ImagePair(p.hazy, p.clear, p.hazy.parent.relative_to(hazy_dir).as_posix()) for p in pairs]
            return PairedLayout("video-frames", root, tuple(grouped))
        return PairedLayout("paired-folders", root, tuple(pairs))
    pairs = _match(hazy_files, hazy_dir, clear_files, clear_dir, _ntire_id(NTIRE_HAZY), _ntire_id(NTIRE_CLEAR))
    if pairs is not None:
        return PairedLayout("ntire", root, tuple(pairs))
    pairs = _match(hazy_files, hazy_dir, clear_files, clear_dir, _reside_id, _same)
    if pairs is not None:
        return PairedLayout("reside", root, tuple(pairs))
    return None


def _describe(root: Path) -> str:
    dirs = sorted(p.name + "/" for p in root.iterdir() if p.is_dir())
    images = list_images(root)
    names = [p.relative_to(root).as_posix() for p in images[:MAX_LISTED]]
    more = ", ..." if len(images) > MAX_LISTED else ""
    shown_dirs = ", ".join(dirs[:MAX_LISTED]) + (", ..." if len(dirs) > MAX_LISTED else "")
    return f"folders [{shown_dirs}], {len(images)} image file(s) [{', '.join(names)}{more}]"


def detect_layout(root: str | Path) -> PairedLayout:
    """Recognise the layout of a paired dataset folder.

    Args:
        root: the dataset folder.

    Returns:
        The layout and its pairs.

    Raises:
        DatasetLayoutError: ``root`` is missing or matches no supported layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset folder not found: {root}")
    hazy_dir = _find_dir(root, HAZY_DIR_NAMES)
    clear_dir = _find_dir(root, CLEAR_DIR_NAMES)
    layout = None
    if hazy_dir is not None and clear_dir is not None:
        layout = _match_folders(root, hazy_dir, clear_dir)
    if layout is None:
        files = [p for p in list_images(root) if p.parent == root]
        hazy = [p for p in files if NTIRE_HAZY.match(p.stem)]
        clear = [p for p in files if NTIRE_CLEAR.match(p.stem)]
        pairs = _match(hazy, root, clear, root, _ntire_id(NTIRE_HAZY), _ntire_id(NTIRE_CLEAR))
        if pairs is not None:
            layout = PairedLayout("ntire", root, tuple(pairs))
    if layout is None:
        raise DatasetLayoutError(
            f"no known dataset layout in {root}: found {_describe(root)}; expected hazy/ + clear/ (or GT/) with "
            "matching names, RESIDE names (ID_x.png <-> ID.png), NTIRE names (NN_hazy <-> NN_GT) or video frame "
            "folders hazy/<video>/ + clear/<video>/"
        )
    logger.info("dataset %s: layout %s, %d pairs", root, layout.name, len(layout.pairs))
    return layout


def split_layout(
    layout: PairedLayout, val_fraction: float, *, seed: int
) -> tuple[tuple[ImagePair, ...], tuple[ImagePair, ...]]:
    """Split a dataset into (train, val) without sharing a clear image or neighbouring video frames.

    Video frames: the last ``val_fraction`` of each video's frames (a contiguous range) go to val, and
    ``VIDEO_GUARD_FRAMES`` frames before that range are left out of both, since neighbouring frames are
    near-duplicates. Other layouts: a seeded random ``val_fraction`` of the groups (clear ids), so the
    several RESIDE hazy versions of one scene stay on one side.

    Args:
        layout: a detected dataset.
        val_fraction: in [0, 1).
        seed: seeds the group shuffle.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetLayoutError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0.0:
        return layout.pairs, ()
    groups: dict[str, list[ImagePair]] = {}
    for p in layout.pairs:
        groups.setdefault(p.group, []).append(p)
    train: list[ImagePair] = []
    val: list[ImagePair] = []
    if layout.name == "video-frames":
        for frames in groups.values():
            n_val = max(1, round(len(frames) * val_fraction))
            cut = len(frames) - n_val
            val.extend(frames[cut:])
            train.extend(frames[: max(0, cut - VIDEO_GUARD_FRAMES)])
        return tuple(train), tuple(val)
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    n_val = max(1, round(len(names) * val_fraction))
    val_names = set(names[:n_val])
    for p in layout.pairs:
        (val if p.group in val_names else train).append(p)
    return tuple(train), tuple(val)
