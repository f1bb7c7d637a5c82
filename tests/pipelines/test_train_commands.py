"""The train / eval commands end to end on tiny models, and the joint small-CLIP stage."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from skimage import data

from cliphaze.evaluate import write_rgb_image
from cliphaze.train.clip_stage import ClipStageConfig, load_towers, save_towers, train_clip_towers

# A tiny open_clip config with cliphaze-tiny's 32-d semantic width (2x2 patch grid at 64 px).
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}


def _images() -> list[np.ndarray]:
    return [data.astronaut()[::4, ::4], data.coffee()[::3, ::3], data.camera()[::4, ::4]]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    from cliphaze.bundle import save_bundle
    from cliphaze.factory import create_model

    torch.manual_seed(0)
    stage = train_clip_towers(_images(), config=ClipStageConfig(steps=3, batch_size=4, warmup_steps=1),
                              model_name="tiny", model_config=TINY_CLIP, progress=False)
    path = tmp_path_factory.mktemp("bundle") / "tiny.safetensors"
    save_bundle(path, create_model("cliphaze-tiny").eval(), stage.encoder, embed_towers=True)
    return path


@pytest.mark.slow
def test_clip_stage_learns_and_round_trips(tmp_path: Path) -> None:
    stage = train_clip_towers(_images(), config=ClipStageConfig(steps=25, batch_size=8, warmup_steps=2, lr=3e-3),
                              model_name="tiny", model_config=TINY_CLIP, progress=False)
    assert stage.stats["final_loss"] < stage.stats["initial_loss"]
    guidance = stage.encoder.encode(torch.rand(2, 3, 40, 70))
    assert guidance.density.shape == (2, 1, 2, 2) and guidance.tokens.shape == (2, 5, 32)
    assert 0.0 <= float(guidance.density.min()) and float(guidance.density.max()) <= 1.0
    save_towers(str(tmp_path / "t.safetensors"), stage)
    again = load_towers(str(tmp_path / "t.safetensors"))
    frames = torch.rand(1, 3, 64, 64)
    # text features are re-normalised on load: equal up to float rounding
    torch.testing.assert_close(again.encoder.encode(frames).density, stage.encoder.encode(frames).density,
                               atol=1e-6, rtol=0)
    assert again.encoder.identity.matches(stage.encoder.identity)


def _paired(folder: Path) -> Path:
    for i, clear in enumerate(_images()[:2]):
        clear = clear[:96, :120]  # dcp needs sides above its 40 px guided-filter radius
        write_rgb_image(folder / "clear" / f"{i}.png", clear)
        write_rgb_image(folder / "hazy" / f"{i}.png", (clear * 0.5 + 110).astype(np.uint8))
    return folder


@pytest.mark.slow
def test_eval_command_on_paired_folder(tmp_path: Path, tiny_bundle: Path) -> None:
    from cli import main

    result = CliRunner().invoke(main, ["eval", str(_paired(tmp_path / "set")), "--weights", str(tiny_bundle),
                                       "--csv", str(tmp_path / "s.csv"), "--grid", str(tmp_path / "g.png")])
    assert result.exit_code == 0, result.output
    for method in ("hazy", "cliphaze-tiny", "dcp"):
        assert method in result.output
    with (tmp_path / "s.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 6
    assert (tmp_path / "g.png").is_file()


def test_eval_command_rejects_unknown_layout(tmp_path: Path, tiny_bundle: Path) -> None:
    from cli import main

    write_rgb_image(tmp_path / "pics" / "a.png", np.zeros((8, 8, 3), np.uint8))
    result = CliRunner().invoke(main, ["eval", str(tmp_path), "--weights", str(tiny_bundle)])
    assert result.exit_code == 2
    assert "no known dataset layout" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_train_command_synthetic_tiny_end_to_end(tmp_path: Path) -> None:
    from cli import main
    from cliphaze.inference import ClipHazeDehazer

    clean = tmp_path / "clean"
    for i, image in enumerate(_images()):
        write_rgb_image(clean / f"{i}.png", image)
    args = ["train", str(clean), "--synthetic", "--out", str(tmp_path / "run"), "--variant", "cliphaze-tiny",
            "--clip", "cliphaze-clip-tiny", "--pretrained", "none", "--prompt-steps", "3", "--steps", "3",
            "--batch", "2", "--crop", "24", "--workers", "0", "--device", "cpu", "--val-every", "3",
            "--ckpt-every", "2", "--val-fraction", "0.34", "--global-airlight"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    bundle = tmp_path / "run" / "cliphaze-tiny.safetensors"
    assert bundle.is_file() and (tmp_path / "run" / "prompts.safetensors").is_file()
    dehazer = ClipHazeDehazer.from_bundle(bundle)
    assert dehazer.net.airlight is not None and dehazer.net.airlight.mlp[-1].weight.any()  # trained, kept
    out = dehazer.restore(torch.randint(0, 255, (1, 20, 30, 3), dtype=torch.uint8), None)
    assert out.shape == (1, 20, 30, 3) and out.dtype == torch.uint8
    # a second call resumes from the final state: nothing left to do, same weights
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "step 3/3" in again.output
