"""ClipHazeDehazer: the CLIPHaze network + CLIP guidance behind the :class:`~cliphaze.dehazer.Dehazer` interface.

Frames in and out are uint8 RGB (N, H, W, 3) on the dehazer's device. Guidance is split out
(``encode_guidance``) so pipelines can cache it; ``restore(..., guidance=None)`` computes it on the spot,
and a batch-1 guidance is broadcast to N frames.

``scale < 1`` runs the network on a downscaled frame (bilinear, antialiased), then brings its reconstruction
fields K and Bb back to full resolution by GUIDED upsampling: bilinear upsampling followed by a guided filter
(``kornia.filters.guided_blur``) with the full-resolution hazy frame as the guide, so the fields pick up the
frame's edges. The restoration ``K * x - Bb + x`` is then formed at full resolution from the full-resolution
input — the output image is never resized.

On a CUDA device (``cuda_graphs``, on by default) the restore path after guidance (preprocessing, network,
upsampling, reconstruction) is captured into a CUDA graph per (batch, H, W, guidance shapes, precision,
scale) and replayed (:mod:`cliphaze.graphs`); :meth:`ClipHazeDehazer.warm_up` captures ahead of the first
frame. What cannot be captured runs eagerly, said once at INFO. The CPU path is unchanged.

``compile_mode`` (off by default) runs the network's forward through ``torch.compile`` instead (see
:mod:`cliphaze.compiled`; ``"reduce-overhead"`` = CUDA graphs on a GPU). Weights and outputs are the same.

open_clip is only imported when guidance towers are built (``from_bundle`` with a guided network).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cliphaze.clip.encoder import PRECISIONS
from cliphaze.compiled import OFF, CompileError, compile_forward_fields
from cliphaze.graphs import CaptureFn, GraphCache, capture_cuda_graph
from cliphaze.guidance_types import Guidance
from cliphaze.preprocess import frames_to_model, model_to_frames

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from cliphaze.clip.encoder import GuidanceEncoder
    from cliphaze.model import ClipHazeNet

logger = logging.getLogger(__name__)


class DehazerConfigError(ValueError):
    """The network and the guidance encoder do not fit together, or an option is out of range."""


@dataclass(frozen=True)
class GuidedUpsampleConfig:
    """Guided upsampling of the reconstruction fields when the network runs at ``scale < 1``."""

    radius_factor: float = 1.0  # guided-filter radius in full-res px = ceil(radius_factor / scale), at least 1
    eps: float = 1e-3  # guided-filter regularisation, in squared units of the [0, 1] guide image
    # At scale 1 the fields pass through the same guided filter with this radius (0: not at all). Why: the
    # network's 8/16/32 px window blocks leave a grid in K/Bb; the edge-aware filter removes it and keeps depth
    # edges (docs/model-card.md "Seams": +0.04/+0.04/+0.07 -> ~0 at 8/16/32 px, PSNR +0.2 dB).
    full_scale_radius_px: int = 4

    def kernel_size(self, scale: float) -> int:
        """Odd window side 2r + 1 for a network scale."""
        return 2 * max(1, math.ceil(self.radius_factor / scale)) + 1


def guided_upsample_fields(
    guide: torch.Tensor, fields: torch.Tensor, config: GuidedUpsampleConfig, scale: float
) -> torch.Tensor:
    """Low-resolution fields -> full resolution, edge-aware.

    Args:
        guide: (N, 3, H, W) full-resolution hazy frames in [0, 1].
        fields: (N, C, h, w) fields computed at ``scale`` x resolution.

    Returns:
        (N, C, H, W) float32: ``guided_blur(guide, bilinear_upsample(fields))``.
    """
    from kornia.filters import guided_blur

    size = (guide.shape[-2], guide.shape[-1])
    up = F.interpolate(fields.float(), size=size, mode="bilinear", align_corners=False)
    return guided_blur(guide.float(), up, config.kernel_size(scale), config.eps)


class ClipHazeDehazer:
    """CLIPHaze dehazer (implements :class:`cliphaze.dehazer.Dehazer`)."""

    def __init__(
        self,
        net: ClipHazeNet,
        guidance_encoder: GuidanceEncoder | None,
        *,
        device: torch.device | str | None = None,
        precision: str = "fp32",
        upsample: GuidedUpsampleConfig | None = None,
        compile_mode: str = OFF,
        compile_backend: str = "inductor",
        cuda_graphs: bool = True,
        graph_capture: CaptureFn | None = None,
    ) -> None:
        """Assemble from parts; prefer :meth:`from_bundle` / :meth:`from_parts`.

        Args:
            net: the network (moved to ``device``, eval mode, weights kept in float32).
            guidance_encoder: towers + prompts; may be None only for a network using no guidance.
            device: defaults to the encoder's device, else the network's.
            precision: "fp32", or "bf16"/"fp16" run under autocast.
            compile_mode: ``cliphaze.compiled.COMPILE_MODES``: "off", or a torch.compile mode
                ("reduce-overhead" = CUDA graphs, CUDA only).
            compile_backend: torch.compile backend ("inductor"; "aot_eager" traces without generating code).
            cuda_graphs: replay the restore path from CUDA graphs on a CUDA device (not with ``compile_mode``,
                which brings its own); False: always eager.
            graph_capture: the capture function (tests: a fake that makes the graph path run on the CPU).
        """
        if precision not in PRECISIONS:
            raise DehazerConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        check_compatible(net, guidance_encoder)
        if device is None:
            device = guidance_encoder.device if guidance_encoder is not None else next(net.parameters()).device
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.encoder = guidance_encoder
        self.precision = precision
        self.upsample = upsample or GuidedUpsampleConfig()
        self.name = net.config.name
        self.compile_mode = compile_mode
        try:
            self._forward_fields = compile_forward_fields(self.net, compile_mode, self.device, compile_backend)
        except CompileError as exc:
            raise DehazerConfigError(str(exc)) from exc
        self._graph_capture: CaptureFn | None = None  # None: the eager path (CPU, graphs off, or torch.compile)
        if graph_capture is not None:
            self._graph_capture = graph_capture
        elif cuda_graphs and self.device.type == "cuda" and compile_mode == OFF:
            self._graph_capture = capture_cuda_graph
        self._thread_graphs = threading.local()  # a thread's cache (and its GPU memory) goes with the thread

    @property
    def graphs(self) -> GraphCache | None:
        """The calling thread's graph cache, or None on the eager path.

        One per thread: each engine restores on its own thread and CUDA stream, and a graph's static buffers
        must not be refilled by one stream while another stream's replay still reads them (``--streams N``
        shares one dehazer between N engines).
        """
        if self._graph_capture is None:
            return None
        cache: GraphCache | None = getattr(self._thread_graphs, "cache", None)
        if cache is None:
            cache = GraphCache(self._restore_fields_and_frames, tag=self.precision, capture=self._graph_capture)
            self._thread_graphs.cache = cache
        return cache

    @classmethod
    def from_parts(
        cls, net: ClipHazeNet, guidance_encoder: GuidanceEncoder | None, *, precision: str | None = None
    ) -> ClipHazeDehazer:
        """Dehazer on the encoder's device and precision (or CPU fp32 without an encoder)."""
        if precision is None:
            precision = guidance_encoder.precision if guidance_encoder is not None else "fp32"
        return cls(net, guidance_encoder, precision=precision)

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike[str],
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        scan_backend: str = "auto",
        compile_mode: str = OFF,
        cuda_graphs: bool = True,
        **bundle_options: str | None,
    ) -> ClipHazeDehazer:
        """Load a bundle (see :func:`cliphaze.bundle.load_bundle`; extra options such as ``daclip_checkpoint``
        relocate referenced tower files); ``compile_mode`` and ``cuda_graphs`` as in the constructor."""
        from cliphaze.bundle import load_bundle

        loaded = load_bundle(path, device=device, precision=precision, scan_backend=scan_backend, **bundle_options)
        return cls(loaded.net, loaded.encoder, device=device, precision=precision, compile_mode=compile_mode,
                   cuda_graphs=cuda_graphs)  # fmt: skip

    @property
    def uses_guidance(self) -> bool:
        return self.encoder is not None

    def _autocast(self) -> AbstractContextManager[object]:
        if self.precision == "fp32":
            return nullcontext()
        # No cast cache: a graph captured with it would replay casts cached at capture time (PyTorch's rule for
        # autocast under CUDA graphs); each weight is used once per forward, so the cache saves nothing here.
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision], cache_enabled=False)

    def encode_guidance(self, frames: torch.Tensor) -> Guidance:
        """Guidance of frames (N, H, W, 3) uint8 on ``device`` (empty Guidance without an encoder)."""
        if self.encoder is None:
            return Guidance()
        return self.encoder.encode(frames)

    @torch.no_grad()
    def restore(self, frames: torch.Tensor, guidance: Guidance | None, *, scale: float = 1.0) -> torch.Tensor:
        """Dehazed frames (N, H, W, 3) uint8 on ``device``.

        Args:
            frames: (N, H, W, 3) uint8 RGB.
            guidance: from :meth:`encode_guidance` (batch N or 1), or None to compute it now.
            scale: network resolution factor in (0, 1]; below 1 the fields are guided-upsampled.
        """
        if not 0.0 < scale <= 1.0:
            raise DehazerConfigError(f"scale must be in (0, 1], got {scale}")
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        frames = frames.to(self.device)
        if guidance is None:
            guidance = self.encode_guidance(frames)
        graphs = self.graphs
        if graphs is not None:
            return graphs(frames, guidance.density, guidance.tokens, scale)
        return self._restore_fields_and_frames(frames, guidance.density, guidance.tokens, scale)

    @torch.no_grad()
    def warm_up(self, batch: int, height: int, width: int, *, scale: float = 1.0) -> bool:
        """Capture the restore graph of (batch, height, width) at ``scale`` now, before the first frame is due.

        Also runs the guidance encoder once (its first call pays lazy initialisation too).

        Returns:
            True when a graph is ready; False on the eager path (CPU, graphs off, or the capture failed).
        """
        graphs = self.graphs
        if graphs is None:
            return False
        frames = torch.zeros((batch, height, width, 3), dtype=torch.uint8, device=self.device)
        guidance = self.encode_guidance(frames[:1])
        return graphs.warm_up(frames, guidance.density, guidance.tokens, scale)

    def _restore_fields_and_frames(self, frames: torch.Tensor, density: torch.Tensor | None,
                                   tokens: torch.Tensor | None, scale: object) -> torch.Tensor:  # fmt: skip
        """The graphed part of :meth:`restore`: uint8 frames and guidance -> uint8 restored frames.

        Reads only its arguments and the network (no host syncs: it is captured into CUDA graphs).
        """
        assert isinstance(scale, float | int)
        x = frames_to_model(frames)  # (N, 3, H, W) in [-1, 1], float32
        height, width = x.shape[-2:]
        net_in = x
        if scale < 1.0:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            net_in = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        with self._autocast():
            k, bb = self._forward_fields(net_in, density, tokens)
        k, bb = k.float(), bb.float()
        if scale < 1.0:
            fields = guided_upsample_fields((x + 1.0) * 0.5, torch.cat([k, bb], dim=1), self.upsample, scale)
            k, bb = fields[:, :1], fields[:, 1:]
        elif self.upsample.full_scale_radius_px > 0:
            refine = GuidedUpsampleConfig(radius_factor=self.upsample.full_scale_radius_px, eps=self.upsample.eps)
            fields = guided_upsample_fields((x + 1.0) * 0.5, torch.cat([k, bb], dim=1), refine, 1.0)
            k, bb = fields[:, :1], fields[:, 1:]
        return model_to_frames(self.net.reconstruct(x, k, bb))


def check_compatible(net: ClipHazeNet, encoder: GuidanceEncoder | None) -> None:
    """Raise :class:`DehazerConfigError` when the network expects guidance the encoder does not produce."""
    guidance = net.config.guidance
    if encoder is None:
        if guidance.use_dam or guidance.use_sam:
            raise DehazerConfigError(f"network {net.config.name} uses CLIP guidance but no guidance encoder was given")
        return
    if guidance.use_dam and not encoder.config.use_density:
        raise DehazerConfigError("network uses the density map (DAM) but the guidance encoder has use_density=False")
    if guidance.use_sam:
        if not encoder.config.use_tokens:
            raise DehazerConfigError("network uses semantic tokens (SAM) but the guidance encoder has use_tokens=False")
        if encoder.token_dim != guidance.semantic_dim:
            raise DehazerConfigError(
                f"network expects {guidance.semantic_dim}-d semantic tokens, the CLIP gives {encoder.token_dim}-d"
            )
