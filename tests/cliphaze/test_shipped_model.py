"""Regression guard for the shipped default model (cliphaze/weights/cliphaze-t.safetensors).

It must load through the public Dehazer path, stay within the size budget, and beat the hazy input on a
small fixed set of held-out content (downscaled so the test stays fast) with both haze kinds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cliphaze.metrics import psnr
from cliphaze.train.content import VAL_STILLS, load_still
from cliphaze.train.data import image_to_tensor
from cliphaze.train.synthetic import HAZE_KINDS, HazeConfig, synthesize_haze

WEIGHTS = Path(__file__).resolve().parents[2] / "cliphaze" / "weights" / "cliphaze-t.safetensors"
MAX_BYTES = 20_000_000
DOWNSCALE = 3  # held-out stills at 1/3 size: about 150 x 200 px
SEED = 7

pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"shipped weights not built yet ({WEIGHTS})")


@pytest.fixture(scope="module")
def dehazer():
    from cliphaze.inference import ClipHazeDehazer

    return ClipHazeDehazer.from_bundle(WEIGHTS, device="cpu")


def _fixed_set() -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = []
    for k, kind in enumerate(HAZE_KINDS):
        for i, name in enumerate(VAL_STILLS):
            clear = load_still(name)[::DOWNSCALE, ::DOWNSCALE]
            sample = synthesize_haze(image_to_tensor(clear), torch.Generator().manual_seed(SEED + 10 * k + i),
                                     HazeConfig(), kind=kind)
            hazy = (sample.hazy * 255).round().byte().permute(1, 2, 0).numpy()
            out.append((kind, hazy, np.ascontiguousarray(clear)))
    return out


def test_weights_file_is_small_safetensors_bundle() -> None:
    from cliphaze.bundle import BUNDLE_KIND
    from cliphaze.checkpoint import read_safetensors

    assert WEIGHTS.stat().st_size <= MAX_BYTES
    assert not WEIGHTS.read_bytes()[:2] == b"PK"  # not a torch.save zip / pickle
    _, metadata = read_safetensors(WEIGHTS)
    assert metadata["kind"] == BUNDLE_KIND and metadata["towers"] == "embedded"
    assert '"name": "cliphaze-t"' in metadata["net_config"]


@pytest.mark.slow
def test_shipped_model_beats_the_hazy_input(dehazer) -> None:
    assert dehazer.name == "cliphaze-t" and dehazer.uses_guidance
    gains = {kind: [] for kind in HAZE_KINDS}
    for kind, hazy, clear in _fixed_set():
        restored = dehazer.restore(torch.from_numpy(hazy)[None], None)[0].numpy()
        gains[kind].append(psnr(restored, clear) - psnr(hazy, clear))
    for kind, values in gains.items():
        assert np.mean(values) > 1.0, f"{kind}: mean PSNR gain {np.mean(values):.2f} dB"
        assert min(values) > 0.0, f"{kind}: an image got worse ({values})"
