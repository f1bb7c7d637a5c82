"""GuidanceEncoder and the density map: shapes, ranges, formula, non-square frames, sizes, batching."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cliphaze.clip import ClipSpec, GuidanceConfig, GuidanceEncoder, PromptError, create_clip
from cliphaze.clip.prompts import text_prompt_set
from cliphaze.preprocess import frames_to_unit, to_clip_input


@pytest.fixture(scope="module")
def clip(tiny_model_name: str, tiny_clip_file: Path):
    return create_clip(ClipSpec(tiny_model_name, str(tiny_clip_file)))


@pytest.fixture(scope="module")
def prompts(clip):
    return text_prompt_set(clip.model, clip.identity, ("a hazy photo.", "a clear photo."))


def _frames(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _encoder(clip, prompts, **options) -> GuidanceEncoder:
    config = GuidanceConfig(clip=ClipSpec(clip.identity.model_name), **options)
    return GuidanceEncoder(config, clip, prompts=prompts)


def test_density_shape_range_and_formula_for_non_square_frames(clip, prompts) -> None:
    encoder = _encoder(clip, prompts, input_size_px=64)
    frames = _frames(3, 45, 121)
    guidance = encoder.encode(frames)
    assert guidance.density.shape == (3, 1, 4, 4)
    assert guidance.density.min() >= 0 and guidance.density.max() <= 1
    # Independent: open_clip's own token output (ln_post applied in 3.x) @ proj, squash-resized input.
    visual = copy.deepcopy(clip.model.visual)
    visual.output_tokens = True
    _, tokens = visual(to_clip_input(frames_to_unit(frames), 64))
    p = F.normalize(tokens @ visual.proj, dim=-1).reshape(3, 4, 4, -1)
    t = prompts.text_features
    expected = torch.sigmoid(100.0 * (p @ t[0] - p @ t[1])).unsqueeze(1)
    torch.testing.assert_close(guidance.density, expected, atol=1e-5, rtol=1e-4)
    assert guidance.tokens.shape == (3, 17, 24)  # plain CLIP tokens when no DA-CLIP is given


def test_float_input_equals_uint8_and_batching_is_invisible(clip, prompts) -> None:
    frames = _frames(5, 30, 50, seed=1)
    whole = _encoder(clip, prompts, input_size_px=64).encode(frames)
    chunked = _encoder(clip, prompts, input_size_px=64, batch_size=2).encode(frames)
    torch.testing.assert_close(whole.density, chunked.density, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole.tokens, chunked.tokens, atol=1e-5, rtol=1e-5)
    as_float = _encoder(clip, prompts, input_size_px=64).encode(frames_to_unit(frames))
    torch.testing.assert_close(as_float.density, whole.density)


def test_larger_clip_input_gives_a_finer_density_grid(clip, prompts) -> None:
    guidance = _encoder(clip, prompts, input_size_px=112).encode(_frames(1, 40, 70))
    assert guidance.density.shape == (1, 1, 7, 7)
    assert guidance.tokens.shape == (1, 50, 24)


def test_switches_and_precision(clip, prompts) -> None:
    only_density = _encoder(clip, prompts, input_size_px=64, use_tokens=False).encode(_frames(2, 20, 20))
    assert only_density.tokens is None and only_density.density is not None
    only_tokens = _encoder(clip, None, input_size_px=64, use_density=False).encode(_frames(2, 20, 20))
    assert only_tokens.density is None and only_tokens.tokens is not None
    with pytest.raises(PromptError, match="needs learned prompts"):
        _encoder(clip, None, input_size_px=64)
    bf16 = GuidanceEncoder(GuidanceConfig(clip=ClipSpec(clip.identity.model_name), input_size_px=64),
                           copy.deepcopy(clip), prompts=prompts, precision="bf16")
    out = bf16.encode(_frames(2, 20, 20))
    assert out.density.dtype == torch.bfloat16 and out.tokens.dtype == torch.bfloat16
    ref = _encoder(clip, prompts, input_size_px=64).encode(_frames(2, 20, 20))
    assert (out.tokens.float() - ref.tokens).abs().max() < 0.1 * ref.tokens.abs().max()


def test_daclip_only_config_shares_the_base_clip(tiny_model_name: str, official_daclip_state, tmp_path: Path) -> None:
    from cliphaze.clip import load_daclip

    path = tmp_path / "daclip_tiny.pt"
    torch.save({"state_dict": official_daclip_state}, path)
    config = GuidanceConfig(clip=ClipSpec(tiny_model_name), daclip_checkpoint=str(path), input_size_px=64,
                            use_density=False)
    encoder = GuidanceEncoder.from_config(config)
    assert encoder.daclip is not None and encoder.clip.model is encoder.daclip.clip
    assert encoder.identity.pretrained == "daclip:daclip_tiny.pt"
    frames = _frames(2, 33, 47, seed=4)
    tokens = encoder.encode(frames).tokens
    reference = load_daclip(path, tiny_model_name).encode_content_tokens(to_clip_input(frames_to_unit(frames), 64))
    torch.testing.assert_close(tokens, reference, atol=1e-5, rtol=1e-5)
