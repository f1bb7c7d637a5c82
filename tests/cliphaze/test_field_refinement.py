"""At scale 1 the dehazer passes K/Bb through an edge-aware guided filter: a block grid in the fields goes away."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from cliphaze.bundle import load_bundle
from cliphaze.inference import ClipHazeDehazer, GuidedUpsampleConfig
from cliphaze.metrics import seam_excess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def parts():
    loaded = load_bundle(ROOT / "cliphaze" / "weights" / "cliphaze-t.safetensors")
    return loaded.net, loaded.encoder


def _gridded_fields(x: torch.Tensor, density, tokens):
    """Stand-in network: smooth fields plus a per-8x8-block offset in K and Bb (what window borders leave)."""
    n, _, h, w = x.shape
    blocks = torch.from_numpy(np.random.default_rng(0).uniform(-0.08, 0.08, (h // 8 + 1, w // 8 + 1))).float()
    grid = blocks.repeat_interleave(8, 0).repeat_interleave(8, 1)[:h, :w]
    k = torch.full((n, 1, h, w), 0.6) + grid
    bb = torch.full((n, 3, h, w), 0.3) + grid
    return k, bb


@pytest.mark.parametrize("radius", [0, 4])
def test_full_scale_refinement_removes_a_block_grid_in_the_fields(parts, radius: int) -> None:
    net, encoder = parts
    clear = data.coffee()[100:292, 150:406]
    hazy = torch.from_numpy((clear * 0.6 + 80).astype(np.uint8))[None]
    dehazer = ClipHazeDehazer.from_parts(net, encoder)
    dehazer.upsample = GuidedUpsampleConfig(full_scale_radius_px=radius)
    dehazer._forward_fields = _gridded_fields
    out = dehazer.restore(hazy, None)[0].numpy()
    excess = seam_excess(out, clear)
    if radius == 0:
        assert excess[8] > 0.1  # the grid of the fields shows in the image
    else:
        assert all(abs(v) < 0.05 for v in excess.values()), excess


def test_default_dehazer_refines_at_full_scale() -> None:
    assert GuidedUpsampleConfig().full_scale_radius_px == 4
