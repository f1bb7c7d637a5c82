"""The single home of value-range mapping: frames <-> network input, frames -> CLIP input.

Training and inference both use these functions, so the [-1, 1] mapping and the CLIP normalisation
are written exactly once.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

# OpenAI CLIP normalisation, used by open_clip ViT models and by DA-CLIP (spec 2.4.1).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def frames_to_unit(frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB frames -> float (N, 3, H, W) in [0, 1]. Float input is taken as [0, 1]."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (N, H, W, 3), got {tuple(frames.shape)}")
    x = frames.permute(0, 3, 1, 2)
    if frames.dtype == torch.uint8:
        return x.to(dtype).div_(255.0)
    return x.to(dtype)


def unit_to_model(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> the network's [-1, 1] range (spec 2.0)."""
    return x * 2.0 - 1.0


def model_to_unit(y: torch.Tensor) -> torch.Tensor:
    """The network's [-1, 1] output -> [0, 1], clamped."""
    return ((y.clamp(-1.0, 1.0) + 1.0) * 0.5).clamp_(0.0, 1.0)


def frames_to_model(frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return unit_to_model(frames_to_unit(frames, dtype))


def unit_to_frames(x: torch.Tensor) -> torch.Tensor:
    """float (N, 3, H, W) in [0, 1] -> uint8 (N, H, W, 3), rounded, contiguous."""
    return (x.clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def model_to_frames(y: torch.Tensor) -> torch.Tensor:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    return unit_to_frames(model_to_unit(y.float()))


def to_clip_input(x: torch.Tensor, size: int | tuple[int, int] = 224) -> torch.Tensor:
    """[0, 1] images (N, 3, H, W) -> CLIP input (N, 3, s, s): squash-resize (bicubic, antialias), normalise.

    The whole frame is resized without a centre crop, so the density map stays aligned with a 16:9
    frame (spec 2.4.1).
    """
    if isinstance(size, int):
        size = (size, size)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp_(0.0, 1.0)
    mean = device_constant(CLIP_MEAN, x.device, x.dtype).view(1, 3, 1, 1)
    std = device_constant(CLIP_STD, x.device, x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


@functools.cache
def device_constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``values`` as a 1-d tensor on ``device``, made once per (values, device, dtype) and shared (read only).

    ``torch.tensor(values, device=cuda)`` per call is a host-to-device copy from pageable memory: it
    synchronizes the host and cannot be captured into a CUDA graph. Callers must not modify the result.
    """
    return torch.tensor(values, device=device, dtype=dtype)
