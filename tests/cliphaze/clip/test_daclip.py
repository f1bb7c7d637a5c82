"""DA-CLIP: strict loading of the official key layout, and features checked against a manual ViT forward."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cliphaze.clip import CheckpointFormatError, StateDictMismatchError, load_daclip
from clip_reference import manual_daclip_reference

BATCH = 2


def _images(size: int = 64) -> torch.Tensor:
    return torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(7))


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def reference(official_daclip_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return manual_daclip_reference(official_daclip_state, _images())


@pytest.mark.parametrize("container", ["raw", "state_dict", "module", "safetensors"])
def test_official_layout_loads_strictly_and_matches_manual_forward(
    container: str, tiny_model_name: str, official_daclip_state: dict[str, torch.Tensor],
    reference: dict[str, torch.Tensor], tmp_path: Path,
) -> None:
    state = official_daclip_state
    if container == "raw":
        path = _save(state, tmp_path / "daclip.pt")
    elif container == "state_dict":
        path = _save({"epoch": 30, "name": "daclip", "state_dict": state}, tmp_path / "daclip.pt")
    elif container == "module":
        path = _save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "daclip.pt")
    else:
        from safetensors.torch import save_file

        path = tmp_path / "daclip.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))

    model = load_daclip(path, tiny_model_name)
    content, degradation = model.encode_image(_images())
    torch.testing.assert_close(content, reference["content"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(degradation, reference["degradation"], atol=1e-5, rtol=1e-5)
    # The control must actually change the content features (else the reversed-order check is vacuous).
    assert (content - reference["plain"]).abs().max() > 1e-3


def test_reversed_order_matters(
    tiny_model_name: str, official_daclip_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    model = load_daclip(_save(official_daclip_state, tmp_path / "d.pt"), tiny_model_name)
    forward_order = manual_daclip_reference(official_daclip_state, _images(), reverse=False)["content"]
    content, _ = model.encode_image(_images())
    assert (content - forward_order).abs().max() > 1e-4


def test_normalize_plain_and_tokens(tiny_model_name: str, official_daclip_state: dict[str, torch.Tensor],
                                    reference: dict[str, torch.Tensor], tmp_path: Path) -> None:
    model = load_daclip(_save(official_daclip_state, tmp_path / "d.pt"), tiny_model_name)
    images = _images()
    content, degradation = model.encode_image(images, normalize=True)
    torch.testing.assert_close(content, F.normalize(reference["content"], dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(degradation, F.normalize(reference["degradation"], dim=-1), atol=1e-5, rtol=1e-5)
    plain = model.encode_image(images, control=False)
    torch.testing.assert_close(plain, reference["plain"], atol=1e-5, rtol=1e-5)
    tokens = model.encode_content_tokens(images)
    assert tokens.shape == (BATCH, 17, 24)  # class + 4x4 patches, joint-space width
    torch.testing.assert_close(tokens, reference["content_tokens"], atol=1e-5, rtol=1e-5)


def _expect_mismatch(state: dict[str, torch.Tensor], name: str, tmp_path: Path, *needles: str) -> str:
    with pytest.raises(StateDictMismatchError) as info:
        load_daclip(_save(state, tmp_path / "bad.pt"), name)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message
    return message


def test_missing_unexpected_misshaped_keys_named(tiny_model_name: str, official_daclip_state: dict[str, torch.Tensor],
                                                tmp_path: Path) -> None:
    state = dict(official_daclip_state)
    del state["visual_control.transformer.zero_modules.1.bias"]
    state["visual_control.extra_head.weight"] = torch.zeros(3)
    state["clip.visual.proj"] = torch.zeros(5, 5)
    state["visual.proj"] = state["clip.visual.proj"]
    message = _expect_mismatch(
        state, tiny_model_name, tmp_path,
        "missing keys: visual_control.transformer.zero_modules.1.bias",
        "unexpected keys: visual_control.extra_head.weight",
        "mis-shaped keys", "clip.visual.proj (5, 5) vs (32, 24)",
    )
    assert message.startswith("DA-CLIP checkpoint")


def test_controller_blocks_need_the_doubled_transformer_prefix(
    tiny_model_name: str, official_daclip_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    state = {k.replace("visual_control.transformer.transformer.", "visual_control.transformer."): v
             for k, v in official_daclip_state.items()}
    _expect_mismatch(state, tiny_model_name, tmp_path, "missing keys: visual_control.transformer.transformer.",
                     "unexpected keys: visual_control.transformer.resblocks.")


def test_visual_duplicates_must_equal_clip_visual(tiny_model_name: str, official_daclip_state: dict[str, torch.Tensor],
                                                 tmp_path: Path) -> None:
    state = dict(official_daclip_state)
    state["visual.ln_post.bias"] = state["visual.ln_post.bias"] + 1.0
    _expect_mismatch(state, tiny_model_name, tmp_path, "visual.* duplicates differ", "visual.ln_post.bias")
    partial = {k: v for k, v in official_daclip_state.items() if k != "visual.conv1.weight"}
    _expect_mismatch(partial, tiny_model_name, tmp_path, "missing keys: visual.conv1.weight")


def test_without_visual_duplicates_still_loads(tiny_model_name: str, official_daclip_state: dict[str, torch.Tensor],
                                              reference: dict[str, torch.Tensor], tmp_path: Path) -> None:
    state = {k: v for k, v in official_daclip_state.items() if not k.startswith("visual.")}
    content, _ = load_daclip(_save(state, tmp_path / "d.pt"), tiny_model_name).encode_image(_images())
    torch.testing.assert_close(content, reference["content"], atol=1e-5, rtol=1e-5)


class _Exploit:
    """Pickles to a call of os.mkdir(marker): running it would prove the pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_malicious_pickle_refused_and_not_executed(tiny_model_name: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Exploit(marker)}, path)
    with pytest.raises(CheckpointFormatError, match="refused to load"):
        load_daclip(path, tiny_model_name)
    assert not marker.exists()
    # The payload is real: a plain (unsafe) unpickle runs it.
    torch.load(path, weights_only=False)
    assert marker.is_dir()


def test_missing_file_is_one_clear_error(tiny_model_name: str, tmp_path: Path) -> None:
    with pytest.raises(CheckpointFormatError, match="does not exist"):
        load_daclip(tmp_path / "nope.pt", tiny_model_name)


def test_loaded_model_is_frozen_and_identified(tiny_model_name: str, official_daclip_state: dict[str, torch.Tensor],
                                              tmp_path: Path) -> None:
    model = load_daclip(_save(official_daclip_state, tmp_path / "daclip_tiny.pt"), tiny_model_name)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert model.identity is not None and model.identity.pretrained == "daclip:daclip_tiny.pt"
    assert math.isclose(float(model.logit_scale), float(official_daclip_state["logit_scale"]), rel_tol=1e-6)
