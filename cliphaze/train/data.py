"""Training datasets: paired hazy/clear images and clean images hazed on the fly, with augmentation.

Every sample is a pure function of ``(seed, position)``: ``position`` counts samples since the start of
training (``step * batch_size + i``), the epoch is ``position // len(items)`` and picks a seeded
permutation, and the crop/flip/haze randomness comes from a generator seeded with ``(seed, position)``.
Nothing reads the global RNGs, so data-loader workers, restarts and resumes all see the same stream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from cliphaze.evaluate import read_rgb_image
from cliphaze.train.layouts import ImagePair
from cliphaze.train.synthetic import HazeConfig, HazeKind, apply_scattering, synthesize_haze

logger = logging.getLogger(__name__)

# Seeds of the permutation stream and of the per-sample stream are kept apart by this tag.
_PERMUTATION_TAG = 0x5EED
_SAMPLE_TAG = 0xA116


class DataError(ValueError):
    """An image that cannot be read or used."""


@dataclass(frozen=True)
class AugmentConfig:
    """Random crops and flips applied identically to every tensor of a sample."""

    crop_px: int = 128  # square crop side in px; smaller images are upscaled to fit first
    hflip: bool = True  # random left-right flip
    vflip: bool = False  # random top-bottom flip
    rot90: bool = False  # random rotation by k * 90 degrees

    def __post_init__(self) -> None:
        if self.crop_px < 1:
            raise DataError(f"crop_px must be positive, got {self.crop_px}")


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any skimage-style image (grey, bool, float in [0, 1], RGBA) -> RGB uint8 (H, W, 3)."""
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype.kind == "f":
        image = (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DataError(f"unsupported image dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise DataError(f"expected (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
    return np.ascontiguousarray(image[:, :, :3])


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def sample_generator(seed: int, position: int) -> torch.Generator:
    """The generator of one sample's randomness, a pure function of (seed, position)."""
    mixed = np.random.SeedSequence([seed, _SAMPLE_TAG, position]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed) & 0x7FFF_FFFF_FFFF_FFFF)


class EpochPermutation:
    """Maps a global sample position to an item index: each epoch visits every item once, seeded order."""

    def __init__(self, num_items: int, seed: int) -> None:
        if num_items < 1:
            raise DataError("a dataset needs at least one item")
        self.num_items = num_items
        self.seed = seed
        self._epoch = -1
        self._order = np.arange(num_items)

    def __call__(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_items)
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, _PERMUTATION_TAG, epoch]).permutation(self.num_items)
            self._epoch = epoch
        return int(self._order[offset])


class PositionSampler(Sampler[int]):
    """Yields sample positions ``start, start + 1, ...`` (``count`` of them) for a position-indexed dataset."""

    def __init__(self, start: int, count: int) -> None:
        self.start = start
        self.count = count

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.start + self.count))

    def __len__(self) -> int:
        return self.count


def ensure_min_size(x: torch.Tensor, size_px: int) -> torch.Tensor:
    """Upscale (bilinear, aspect kept) so both sides are at least ``size_px``. x: (C, H, W)."""
    h, w = x.shape[-2:]
    if min(h, w) >= size_px:
        return x
    scale = size_px / min(h, w)
    new = (max(size_px, round(h * scale)), max(size_px, round(w * scale)))
    return F.interpolate(x[None], size=new, mode="bilinear", align_corners=False, antialias=False)[0]


def augment(tensors: Sequence[torch.Tensor], generator: torch.Generator, config: AugmentConfig) -> list[torch.Tensor]:
    """The same random crop, flips and rotation for every tensor (C_i, H, W) of one sample."""
    h, w = tensors[0].shape[-2:]
    c = config.crop_px
    top = int(torch.randint(h - c + 1, (), generator=generator))
    left = int(torch.randint(w - c + 1, (), generator=generator))
    out = [t[:, top : top + c, left : left + c] for t in tensors]
    if config.hflip and bool(torch.rand((), generator=generator) < 0.5):
        out = [t.flip(-1) for t in out]
    if config.vflip and bool(torch.rand((), generator=generator) < 0.5):
        out = [t.flip(-2) for t in out]
    if config.rot90:
        k = int(torch.randint(4, (), generator=generator))
        out = [torch.rot90(t, k, dims=(-2, -1)) for t in out]
    return [t.contiguous() for t in out]


class PairedImageDataset(Dataset):
    """Hazy/clear pairs from disk, indexed by global sample position.

    Items: ``{"hazy": (3, c, c), "clear": (3, c, c)}`` float in [0, 1].
    """

    def __init__(self, pairs: Sequence[ImagePair], augment_config: AugmentConfig, *, seed: int) -> None:
        self.pairs = list(pairs)
        self.augment_config = augment_config
        self.seed = seed
        self._order = EpochPermutation(len(self.pairs), seed)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        pair = self.pairs[self._order(position)]
        hazy = image_to_tensor(read_rgb_image(pair.hazy))
        clear = image_to_tensor(read_rgb_image(pair.clear))
        if hazy.shape != clear.shape:
            raise DataError(f"size mismatch: {pair.hazy} {tuple(hazy.shape)} vs {pair.clear} {tuple(clear.shape)}")
        hazy = ensure_min_size(hazy, self.augment_config.crop_px)
        clear = ensure_min_size(clear, self.augment_config.crop_px)
        hazy, clear = augment([hazy, clear], sample_generator(self.seed, position), self.augment_config)
        return {"hazy": hazy, "clear": clear}


# Short side (px) of the copy of the whole image on which the haze fields are drawn (see
# SyntheticHazeDataset): the fields are smooth, so this costs little and changes nothing visible.
HAZE_FIELD_SIDE_PX = 160


def haze_fields_at_image_scale(
    clear: torch.Tensor, generator: torch.Generator, config: HazeConfig, *, kind: HazeKind | None, field_side_px: int
) -> tuple[torch.Tensor, torch.Tensor, HazeKind]:
    """Transmission of the whole image (1, H, W), airlight (3,) and kind, drawn on a downscaled copy.

    The depth proxy, the non-homogeneous field and the brightness blur are all smooth at the scale of
    the image, so they are drawn on an area-downscaled copy (short side ``field_side_px``) and the
    transmission is upsampled bilinearly; a crop of the result then has the haze statistics of a crop
    of a hazy photo, which is what inference sees, not those of a whole small photo.
    """
    h, w = clear.shape[-2:]
    scale = min(1.0, field_side_px / min(h, w))
    small = clear
    if scale < 1.0:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        small = F.interpolate(clear[None], size=size, mode="area")[0]
    sample = synthesize_haze(small, generator, config, kind=kind)
    t = sample.transmission
    if t.shape[-2:] != (h, w):
        t = F.interpolate(t[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return t, sample.airlight, sample.kind  # bilinear weights are convex: t stays within [t_min, 1]


class SyntheticHazeDataset(Dataset):
    """Clean images (stills or video frames) hazed on the fly, indexed by global sample position.

    Items: ``{"hazy": (3, c, c), "clear": (3, c, c), "transmission": (1, c, c), "airlight": (3,),
    "homogeneous": bool tensor}``. By default the haze is drawn at the scale of the whole image (its
    transmission field on a small copy, :func:`haze_fields_at_image_scale`), then the crop is taken and
    hazed with the scattering model, so a crop carries the slowly varying haze of a full frame.
    ``field_side_px=None`` instead hazes the crop as if it were a whole photo.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        augment_config: AugmentConfig,
        haze_config: HazeConfig,
        *,
        seed: int,
        kind: HazeKind | None = None,
        field_side_px: int | None = HAZE_FIELD_SIDE_PX,
    ) -> None:
        """Args:
        images: RGB uint8 (H, W, 3) clean images, kept in memory.
        augment_config: crops and flips.
        haze_config: synthetic-haze ranges.
        seed: seeds the item order, the crops and the haze.
        kind: force one haze kind (default: drawn per sample from ``haze_config.kinds``).
        field_side_px: short side of the copy the haze fields are drawn on (None: haze the crop itself).
        """
        if field_side_px is not None and field_side_px < 8:
            raise DataError(f"field_side_px must be >= 8 or None, got {field_side_px}")
        self.images = [to_rgb_uint8(im) for im in images]
        self.augment_config = augment_config
        self.haze_config = haze_config
        self.seed = seed
        self.kind = kind
        self.field_side_px = field_side_px
        self._order = EpochPermutation(len(self.images), seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        clear = ensure_min_size(image_to_tensor(self.images[self._order(position)]), self.augment_config.crop_px)
        generator = sample_generator(self.seed, position)
        if self.field_side_px is None:
            (clear,) = augment([clear], generator, self.augment_config)
            sample = synthesize_haze(clear, generator, self.haze_config, kind=self.kind)
            hazy, t, airlight, kind = sample.hazy, sample.transmission, sample.airlight, sample.kind
        else:
            t, airlight, kind = haze_fields_at_image_scale(
                clear, generator, self.haze_config, kind=self.kind, field_side_px=self.field_side_px
            )
            clear, t = augment([clear, t], generator, self.augment_config)
            hazy = apply_scattering(clear, t, airlight)
        return {
            "hazy": hazy,
            "clear": clear,
            "transmission": t,
            "airlight": airlight,
            "homogeneous": torch.tensor(kind == "homogeneous"),
        }
