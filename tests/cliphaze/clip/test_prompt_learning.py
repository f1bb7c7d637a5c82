"""Prompt learning: text path, training on a synthetic hazy/clear set, save/load and CLIP identity checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from cliphaze.clip import (
    ClipSpec,
    GuidanceConfig,
    GuidanceEncoder,
    PromptError,
    PromptMismatchError,
    PromptTrainConfig,
    create_clip,
    load_prompts,
    save_prompts,
    train_prompts,
)
from cliphaze.clip.prompt_training import synthesize_haze
from cliphaze.clip.prompts import encode_prompt_embeddings, init_prompt_embeddings

# Wider pooled features than the shared tiny config (random features separate better), short text context.
PROMPT_TEST_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CROPS_PER_IMAGE = 3
SAVED_SIZE_PX = 96


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return create_clip(ClipSpec("prompt-test-clip", model_config_json=json.dumps(PROMPT_TEST_CONFIG)))


@pytest.fixture(scope="module")
def hazy_clear_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Crops of scikit-image photos (clear) and the same crops under homogeneous synthetic haze."""
    import skimage.data
    from PIL import Image

    root = tmp_path_factory.mktemp("prompt_data")
    hazy_dir, clear_dir = root / "hazy", root / "clear"
    hazy_dir.mkdir()
    clear_dir.mkdir()
    gen = torch.Generator().manual_seed(0)
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket(),
              skimage.data.immunohistochemistry(), skimage.data.hubble_deep_field()]
    k = 0
    for photo in photos:
        img = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
        h, w = img.shape[1:]
        side = min(h, w) // 2
        for _ in range(CROPS_PER_IMAGE):
            y = int(torch.randint(0, h - side, (1,), generator=gen))
            x = int(torch.randint(0, w - side, (1,), generator=gen))
            clear = img[:, y:y + side, x:x + side]
            t = 0.15 + 0.2 * torch.rand(1, generator=gen)
            airlight = 0.8 + 0.2 * torch.rand(1, generator=gen)
            hazy = clear * t + airlight * (1 - t)
            for folder, im in ((clear_dir, clear), (hazy_dir, hazy)):
                array = (im.permute(1, 2, 0) * 255).round().byte().numpy()
                Image.fromarray(array).resize((SAVED_SIZE_PX, SAVED_SIZE_PX)).save(folder / f"{k:02d}.png")
            k += 1
    return hazy_dir, clear_dir


FAST = PromptTrainConfig(steps=80, lr=5e-2, eval_every=10, augment=False, load_size_px=64, input_size_px=64)


def test_prompt_text_path_equals_encode_text_with_causal_mask(clip) -> None:
    import open_clip

    model = clip.model
    texts = ["a hazy photo.", "a clear photo of a cat"]
    ids = open_clip.tokenize(texts, context_length=24)
    embeddings = model.token_embedding(ids)
    ours = encode_prompt_embeddings(model, embeddings, ids.argmax(dim=-1))
    torch.testing.assert_close(ours, model.encode_text(ids), atol=1e-5, rtol=1e-5)
    # The causal mask matters: without it the EOT feature sees the padding and changes.
    mask = model.attn_mask
    model.attn_mask = None
    try:
        unmasked = encode_prompt_embeddings(model, embeddings, ids.argmax(dim=-1))
    finally:
        model.attn_mask = mask
    assert (unmasked - ours).abs().max() > 1e-4


def test_placeholder_init_has_16_context_tokens(clip) -> None:
    embeddings, eot = init_prompt_embeddings(clip.model)
    assert embeddings.shape == (2, 24, 32)
    assert eot.tolist() == [17, 17]  # SOT + 16 "X" + EOT


def _accuracy(clip, prompts, hazy_dir: Path, clear_dir: Path) -> float:
    """Independent check: pooled CLIP features via open_clip's encode_image vs the stored text features."""
    from cliphaze.clip.prompt_training import list_images, load_images
    from cliphaze.preprocess import to_clip_input

    correct = total = 0
    for label, folder in ((0, hazy_dir), (1, clear_dir)):
        images = load_images(list_images(folder), 64)
        with torch.no_grad():
            feats = clip.model.encode_image(to_clip_input(images, 64), normalize=True)
        pred = (100.0 * feats @ prompts.text_features.t()).argmax(dim=-1)
        correct += int((pred == label).sum())
        total += len(pred)
    return correct / total


def test_training_drives_loss_down_and_separates_classes(clip, hazy_clear_dirs, tmp_path: Path) -> None:
    hazy_dir, clear_dir = hazy_clear_dirs
    prompts = train_prompts(hazy_dir, clear_dir, clip, config=FAST, progress=False)
    assert prompts.stats["final_loss"] < 0.5 * prompts.stats["initial_loss"]
    assert prompts.stats["accuracy"] > 0.9
    assert _accuracy(clip, prompts, hazy_dir, clear_dir) > 0.9
    # Round trip through safetensors, with the CLIP identity checked.
    path = tmp_path / "prompts.safetensors"
    save_prompts(path, prompts)
    loaded = load_prompts(path, expected=clip.identity)
    assert torch.equal(loaded.embeddings, prompts.embeddings)
    torch.testing.assert_close(loaded.text_features, prompts.text_features)
    assert loaded.stats["accuracy"] == pytest.approx(prompts.stats["accuracy"])


def test_patch_level_term_trains(clip, hazy_clear_dirs) -> None:
    hazy_dir, clear_dir = hazy_clear_dirs
    config = dataclasses.replace(FAST, steps=40, patch_loss_weight=1.0)
    prompts = train_prompts(hazy_dir, clear_dir, clip, config=config, progress=False)
    assert prompts.stats["final_loss"] < prompts.stats["initial_loss"]
    assert prompts.stats["initial_loss"] > prompts.stats["final_ce"]  # the total includes the BCE term


def test_synthetic_haze_follows_the_scattering_model() -> None:
    gen = torch.Generator().manual_seed(3)
    clear = torch.rand(2, 3, 32, 32, generator=gen)
    hazy, t = synthesize_haze(clear, PromptTrainConfig(), gen)
    assert t.shape == (2, 1, 32, 32) and float(t.min()) > 0 and float(t.max()) <= 1
    assert float(t.std()) > 0.01  # spatially varying
    airlight = ((hazy - clear * t) / (1 - t).clamp_min(1e-3))[..., :8, :]  # top rows: far, t well below 1
    per_image_spread = airlight.flatten(1).std(dim=1)  # one airlight A per image, recovered everywhere
    assert float(per_image_spread.max()) < 1e-3


def test_prompts_for_another_clip_are_refused(clip, tmp_path: Path) -> None:
    from cliphaze.clip.prompts import text_prompt_set

    prompts = text_prompt_set(clip.model, clip.identity, ("a hazy photo.", "a clear photo."))
    path = tmp_path / "p.safetensors"
    save_prompts(path, prompts)
    torch.manual_seed(123)
    other = create_clip(ClipSpec("prompt-test-clip", model_config_json=json.dumps(PROMPT_TEST_CONFIG)))
    with pytest.raises(PromptMismatchError, match="prompts were learned for CLIP") as info:
        load_prompts(path, expected=other.identity)
    assert "\n" not in str(info.value)
    with pytest.raises(PromptMismatchError):
        GuidanceEncoder(GuidanceConfig(clip=ClipSpec("prompt-test-clip"), input_size_px=64), other, prompts=prompts)
    not_prompts = tmp_path / "x.safetensors"
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(not_prompts))
    with pytest.raises(PromptError, match="not a cliphaze prompts file"):
        load_prompts(not_prompts)


def test_empty_folder_is_a_clear_error(clip, tmp_path: Path) -> None:
    (tmp_path / "h").mkdir()
    (tmp_path / "c").mkdir()
    with pytest.raises(PromptError, match="no images"):
        train_prompts(tmp_path / "h", tmp_path / "c", clip, config=FAST, progress=False)
