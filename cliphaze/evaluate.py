"""Evaluation of dehazers: paired images at full resolution, and no-reference scores on video.

Paired mode: every dehazer (``cliphaze``, ``dcp``, ...) restores each hazy image through the
:class:`~cliphaze.dehazer.Dehazer` interface (uint8 in, uint8 out, one image per call); the hazy input
itself is scored as the ``hazy`` row. Writes a long-format per-image CSV
(``image, method, psnr_db, ssim, ssim_dehazeformer, ms``), returns per-method means, and optionally a
before/after grid image (hazy | each method | ground truth).

Video mode (no ground truth): per sampled frame, the no-reference haze scores of
:mod:`cliphaze.metrics` before and after, and the mean CLIP density map when the dehazer computes one.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cliphaze.dehazer import Dehazer
from cliphaze.metrics import (
    SEAM_PERIODS_PX,
    NoReferenceScores,
    no_reference_scores,
    psnr,
    seam_excess,
    ssim,
    ssim_dehazeformer_image,
)

logger = logging.getLogger(__name__)

HAZY_METHOD = "hazy"
# Height in px of one tile of the before/after grid.
GRID_TILE_HEIGHT_PX = 192
# Gap between grid tiles in px.
GRID_GAP_PX = 4
MS_PER_S = 1000.0


class EvaluationError(RuntimeError):
    """Evaluation that cannot run: unreadable images, mismatched sizes, an unreadable video."""


@dataclass(frozen=True)
class ImageScore:
    """Scores of one method on one image."""

    image: str  # name of the hazy image
    method: str  # "hazy", "dcp", "cliphaze-t", ...
    psnr_db: float  # skimage PSNR over RGB in [0, 1]
    ssim: float  # skimage SSIM, full-resolution RGB (Wang et al. settings)
    ssim_dehazeformer: float  # pytorch_msssim SSIM after DehazeFormer's pooling
    ms: float  # wall time of the restore call in ms (0 for "hazy")
    seams_8: float = float("nan")  # grid seams added at 8 px blocks (metrics.seam_excess; ~0 = none; NaN: too small)
    seams_16: float = float("nan")  # same at 16 px
    seams_32: float = float("nan")  # same at 32 px


@dataclass(frozen=True)
class MethodSummary:
    """Means of one method over the evaluated images."""

    method: str
    images: int
    psnr_db: float
    ssim: float
    ssim_dehazeformer: float
    ms: float
    seams_8: float = float("nan")  # mean grid-seam excess at 8 / 16 / 32 px (see ImageScore)
    seams_16: float = float("nan")
    seams_32: float = float("nan")


@dataclass(frozen=True)
class PairedReport:
    """Result of :func:`evaluate_pairs`."""

    scores: tuple[ImageScore, ...]
    summary: dict[str, MethodSummary]


def read_rgb_image(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3) (grey replicated, alpha dropped, 16-bit scaled to 8)."""
    import cv2

    data = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if data is None:
        raise EvaluationError(f"cannot read image {path}")
    return cv2.cvtColor(data, cv2.COLOR_BGR2RGB)


def write_rgb_image(path: str | Path, image: np.ndarray) -> None:
    """Write RGB uint8 (H, W, 3) to ``path`` (format from the extension)."""
    import cv2

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)):
        raise EvaluationError(f"cannot write image {path}")


def restore_image(dehazer: Dehazer, image: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Run a dehazer on one RGB uint8 (H, W, 3) image (at ``scale``, see Dehazer.restore); returns RGB uint8 (H, W, 3).

    Stateful dehazers (``dcp`` smooths its airlight over frames) are reset first: images are
    independent.
    """
    reset = getattr(dehazer, "reset", None)
    if callable(reset):
        reset()
    frames = torch.from_numpy(np.ascontiguousarray(image))[None].to(dehazer.device)
    out = dehazer.restore(frames, None, scale=scale)
    return out[0].cpu().numpy()


def _score(name: str, method: str, restored: np.ndarray, clear: np.ndarray, ms: float) -> ImageScore:
    seams = {p: float("nan") for p in SEAM_PERIODS_PX}
    if min(clear.shape[:2]) > 2 * max(SEAM_PERIODS_PX):
        seams = seam_excess(restored, clear)
    return ImageScore(
        image=name,
        method=method,
        psnr_db=psnr(restored, clear),
        ssim=ssim(restored, clear),
        ssim_dehazeformer=ssim_dehazeformer_image(restored, clear),
        ms=ms,
        **{f"seams_{p}": v for p, v in seams.items()},
    )


def _summarise(scores: Sequence[ImageScore]) -> dict[str, MethodSummary]:
    out: dict[str, MethodSummary] = {}
    for method in dict.fromkeys(s.method for s in scores):
        rows = [s for s in scores if s.method == method]
        out[method] = MethodSummary(
            method=method,
            images=len(rows),
            psnr_db=float(np.mean([r.psnr_db for r in rows])),
            ssim=float(np.mean([r.ssim for r in rows])),
            ssim_dehazeformer=float(np.mean([r.ssim_dehazeformer for r in rows])),
            ms=float(np.mean([r.ms for r in rows])),
            **{f"seams_{p}": float(np.mean([getattr(r, f"seams_{p}") for r in rows])) for p in SEAM_PERIODS_PX},
        )
    return out


def _tile(image: np.ndarray, height: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    width = max(1, round(w * height / h))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def make_grid(rows: Sequence[Sequence[np.ndarray]], tile_height_px: int = GRID_TILE_HEIGHT_PX) -> np.ndarray:
    """Tile rows of RGB uint8 images (each resized to ``tile_height_px``) into one RGB uint8 image."""
    strips = []
    for row in rows:
        tiles = [_tile(im, tile_height_px) for im in row]
        gap = np.full((tile_height_px, GRID_GAP_PX, 3), 255, np.uint8)
        parts = [p for t in tiles for p in (t, gap)][:-1]
        strips.append(np.concatenate(parts, axis=1))
    width = max(s.shape[1] for s in strips)
    padded = [np.pad(s, ((0, GRID_GAP_PX), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips]
    return np.concatenate(padded, axis=0)[:-GRID_GAP_PX]


def evaluate_pairs(
    pairs: Sequence[tuple[Path, Path]],
    dehazers: Mapping[str, Dehazer],
    *,
    csv_path: Path | None = None,
    grid_path: Path | None = None,
    grid_rows: int = 6,
    progress: Callable[[int, int], None] | None = None,
    scale: float = 1.0,
) -> PairedReport:
    """Score the hazy input and every dehazer on (hazy, clear) image pairs at full resolution.

    Args:
        pairs: (hazy path, clear path) per image; sizes must match.
        dehazers: method name -> dehazer; evaluated in this order after the ``hazy`` row.
        csv_path: where to write the per-image CSV (optional).
        grid_path: where to write the before/after grid of the first ``grid_rows`` images (optional).
        grid_rows: images in the grid.
        progress: called with (done, total) after each image.
        scale: processing scale passed to every dehazer's ``restore`` (1 = full resolution).

    Returns:
        Per-image scores and per-method means.
    """
    if not pairs:
        raise EvaluationError("nothing to evaluate: no image pairs")
    scores: list[ImageScore] = []
    grid: list[list[np.ndarray]] = []
    for i, (hazy_path, clear_path) in enumerate(pairs):
        hazy = read_rgb_image(hazy_path)
        clear = read_rgb_image(clear_path)
        if hazy.shape != clear.shape:
            raise EvaluationError(f"size mismatch: {hazy_path} {hazy.shape} vs {clear_path} {clear.shape}")
        name = Path(hazy_path).name
        scores.append(_score(name, HAZY_METHOD, hazy, clear, 0.0))
        row = [hazy]
        for method, dehazer in dehazers.items():
            start = time.perf_counter()
            restored = restore_image(dehazer, hazy, scale)
            ms = (time.perf_counter() - start) * MS_PER_S
            scores.append(_score(name, method, restored, clear, ms))
            row.append(restored)
        if grid_path is not None and i < grid_rows:
            grid.append([*row, clear])
        if progress is not None:
            progress(i + 1, len(pairs))
    report = PairedReport(scores=tuple(scores), summary=_summarise(scores))
    if csv_path is not None:
        write_scores_csv(csv_path, report.scores)
    if grid_path is not None:
        write_rgb_image(grid_path, make_grid(grid))
    for s in report.summary.values():
        logger.info("%s: PSNR %.2f dB, SSIM %.4f (%d images)", s.method, s.psnr_db, s.ssim, s.images)
    return report


def write_scores_csv(path: Path, scores: Sequence[ImageScore]) -> None:
    """Write per-image scores as CSV with a header row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ImageScore.__dataclass_fields__))
        writer.writeheader()
        for s in scores:
            writer.writerow(asdict(s))


@dataclass(frozen=True)
class FrameScores:
    """No-reference scores of one video frame before and after dehazing."""

    index: int  # frame index in decode order
    before: NoReferenceScores
    after: NoReferenceScores
    density_before: float | None = None  # mean CLIP density of the input (None without CLIP guidance)
    density_after: float | None = None  # mean CLIP density of the output


@dataclass(frozen=True)
class VideoReport:
    """Result of :func:`evaluate_video`: per-frame scores and their means."""

    frames: tuple[FrameScores, ...]
    means: dict[str, float] = field(default_factory=dict)


def _mean_density(dehazer: Dehazer, frames: torch.Tensor) -> float | None:
    if not dehazer.uses_guidance:
        return None
    guidance = dehazer.encode_guidance(frames)
    return None if guidance.density is None else float(guidance.density.float().mean())


def evaluate_video(
    dehazer: Dehazer,
    frames: Iterable[tuple[int, np.ndarray]],
    *,
    csv_path: Path | None = None,
) -> VideoReport:
    """No-reference haze scores of video frames before and after ``dehazer``.

    Args:
        dehazer: the method scored.
        frames: (frame index, RGB uint8 (H, W, 3)) pairs, e.g. every n-th decoded frame of a clip.
        csv_path: also write the per-frame scores here.

    Returns:
        Per-frame scores and means (``*_before``, ``*_after`` and, with CLIP guidance, ``density_*``).
    """
    rows: list[FrameScores] = []
    for index, rgb in frames:
        frames = torch.from_numpy(rgb)[None].to(dehazer.device)
        restored = dehazer.restore(frames, None)
        rows.append(
            FrameScores(
                index=index,
                before=no_reference_scores(rgb),
                after=no_reference_scores(restored[0].cpu().numpy()),
                density_before=_mean_density(dehazer, frames),
                density_after=_mean_density(dehazer, restored),
            )
        )
    if not rows:
        raise EvaluationError("no video frames to score")
    means: dict[str, float] = {}
    for key in NoReferenceScores.__dataclass_fields__:
        means[f"{key}_before"] = float(np.mean([getattr(r.before, key) for r in rows]))
        means[f"{key}_after"] = float(np.mean([getattr(r.after, key) for r in rows]))
    if rows[0].density_before is not None:
        means["density_before"] = float(np.mean([r.density_before for r in rows]))
        means["density_after"] = float(np.mean([r.density_after for r in rows]))
    if csv_path is not None:
        _write_video_csv(csv_path, rows)
    return VideoReport(frames=tuple(rows), means=means)


def _write_video_csv(path: Path, rows: Sequence[FrameScores]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(NoReferenceScores.__dataclass_fields__)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", *(f"{k}_before" for k in keys), *(f"{k}_after" for k in keys),
                         "density_before", "density_after"])
        for r in rows:
            writer.writerow([r.index, *(getattr(r.before, k) for k in keys), *(getattr(r.after, k) for k in keys),
                             "" if r.density_before is None else r.density_before,
                             "" if r.density_after is None else r.density_after])
