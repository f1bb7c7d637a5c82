"""Zero-shot haze-density map M from CLIP patch features and the learned prompt pair (spec 2.5 steps 1-3).

``p_ij`` = L2-normalised patch token (after ``ln_post`` and ``proj``) of the PLAIN CLIP image tower;
``t_h``, ``t_c`` = L2-normalised hazy / clear text features. ``M_ij = sigmoid(tau * (<p,t_h> - <p,t_c>))``,
the 2-way softmax probability of "hazy" with CLIP's logit scale tau = 100.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cliphaze.clip import vit
from cliphaze.clip.prompts import CLEAR, HAZY

if TYPE_CHECKING:
    from torch import nn

# CLIP's logit scale exp(ln 100), the softmax temperature of the density map (spec 2.5.3).
DENSITY_TEMPERATURE = 100.0


def patch_features(visual: nn.Module, clip_input: torch.Tensor) -> torch.Tensor:
    """L2-normalised joint-space patch features of the plain tower.

    Args:
        clip_input: (B, 3, S, S') CLIP-normalised images.

    Returns:
        (B, gh, gw, D) float32; (B, 7, 7, 512) for ViT-B/32 at 224 px.
    """
    gh, gw = vit.grid_size(visual, clip_input.shape[-2], clip_input.shape[-1])
    tokens = vit.encode_tokens(visual, clip_input)[:, vit.NUM_PREFIX_TOKENS:]
    return F.normalize(tokens.float(), dim=-1).reshape(tokens.shape[0], gh, gw, -1)


def density_logits(
    features: torch.Tensor, text_features: torch.Tensor, temperature: float = DENSITY_TEMPERATURE
) -> torch.Tensor:
    """``tau * (<p, t_h> - <p, t_c>)`` per patch.

    Args:
        features: (B, gh, gw, D) L2-normalised patch (or (B, D) pooled) features.
        text_features: (2, D) L2-normalised, row 0 hazy, row 1 clear.

    Returns:
        (B, 1, gh, gw) logits (or (B,) for pooled input).
    """
    direction = (text_features[HAZY] - text_features[CLEAR]).to(features.dtype)
    logits = temperature * (features @ direction)
    return logits.unsqueeze(1) if logits.ndim == 3 else logits


def density_from_features(features: torch.Tensor, text_features: torch.Tensor,
                          temperature: float = DENSITY_TEMPERATURE) -> torch.Tensor:
    """Density map (B, 1, gh, gw) in [0, 1] (1 = dense haze) from (B, gh, gw, D) patch features."""
    return torch.sigmoid(density_logits(features, text_features, temperature))


def density_map(visual: nn.Module, clip_input: torch.Tensor, text_features: torch.Tensor,
                temperature: float = DENSITY_TEMPERATURE) -> torch.Tensor:
    """Density map (B, 1, gh, gw) in [0, 1] of CLIP-normalised images (B, 3, S, S')."""
    return density_from_features(patch_features(visual, clip_input), text_features.to(clip_input.device), temperature)
