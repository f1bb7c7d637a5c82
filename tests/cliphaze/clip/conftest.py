"""Tiny random-init open_clip configs registered from tmp_path, saved to files, and an official-layout DA-CLIP dict."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch

# Small ViT: 64 px input, 16 px patches (4x4 grid, 17 tokens), 3 blocks so the reversed control order matters.
TINY_CONFIG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_LAYERS = TINY_CONFIG["vision_cfg"]["layers"]


@pytest.fixture(scope="session")
def tiny_model_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Name of a tiny open_clip config registered from a JSON file in tmp_path (unique per session)."""
    from cliphaze.clip import register_model_config

    name = f"cz-test-tiny-{uuid.uuid4().hex[:8]}"
    path = tmp_path_factory.mktemp("configs") / f"{name}.json"
    path.write_text(json.dumps(TINY_CONFIG))
    assert register_model_config(path) == [name]
    return name


def make_clip_state(model_name: str, seed: int) -> dict[str, torch.Tensor]:
    """State dict of a random-init CLIP of ``model_name`` (open_clip key layout)."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, pretrained=None)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def tiny_clip_file(tiny_model_name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP checkpoint file (safetensors), loaded the way a real local checkpoint is."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "tiny_clip.safetensors"
    save_file(make_clip_state(tiny_model_name, seed=1), str(path))
    return path


def make_official_daclip_state(model_name: str, seed: int = 2) -> dict[str, torch.Tensor]:
    """A DA-CLIP state dict in the OFFICIAL key layout (spec 5.2), built key by key.

    Base CLIP under ``clip.``, the ``visual.`` duplicates, a perturbed controller copy under
    ``visual_control.`` with the doubled ``transformer.transformer.`` block prefix, non-zero zero-modules
    (so the control path matters) and the wrapper's ``logit_scale``.
    """
    base = make_clip_state(model_name, seed)
    gen = torch.Generator().manual_seed(seed + 100)
    out: dict[str, torch.Tensor] = {"logit_scale": base["logit_scale"].clone()}
    for key, value in base.items():
        out["clip." + key] = value
        if key.startswith("visual."):
            out[key] = value.clone()  # the same module registered twice
            sub = key[len("visual."):]
            ctrl = value + 0.05 * torch.randn(value.shape, generator=gen)
            if sub.startswith("transformer."):
                out["visual_control.transformer.transformer." + sub[len("transformer."):]] = ctrl
            else:
                out["visual_control." + sub] = ctrl
    width = base["visual.class_embedding"].shape[0]
    for i in range(TINY_LAYERS if model_name.startswith("cz-test-tiny") else 12):
        out[f"visual_control.transformer.zero_modules.{i}.weight"] = 0.1 * torch.randn(width, width, generator=gen)
        out[f"visual_control.transformer.zero_modules.{i}.bias"] = 0.1 * torch.randn(width, generator=gen)
    return out


@pytest.fixture(scope="session")
def official_daclip_state(tiny_model_name: str) -> dict[str, torch.Tensor]:
    return make_official_daclip_state(tiny_model_name)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every CLIP test runs its tiny towers on one thread (tests/conftest.py: one_torch_thread)."""
