"""ClipHazeDehazer end to end on CPU with tiny weights: bundles, shapes, guidance broadcast, scale < 1, imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cliphaze.bundle import BundleError, load_bundle, save_bundle
from cliphaze.clip import ClipSpec, GuidanceConfig, GuidanceEncoder, create_clip, create_daclip, to_official_state_dict
from cliphaze.clip.prompts import text_prompt_set
from cliphaze.inference import ClipHazeDehazer, DehazerConfigError
from cliphaze.factory import create_model
from cliphaze.preprocess import frames_to_model, model_to_frames

TINY_CLIP = "cliphaze-clip-tiny"  # shipped config; 32-d joint space = cliphaze-tiny's semantic_dim
ODD_SIZE = (21, 27)
SCAN = "chunked"  # pure PyTorch: no numba compile on first use


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _frames(n: int = 2, size: tuple[int, int] = ODD_SIZE, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *size, 3), dtype=torch.uint8, generator=gen)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(11)
    model = create_clip(ClipSpec(TINY_CLIP)).model
    path = tmp_path_factory.mktemp("towers") / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def daclip_file(clip_file: Path) -> Path:
    """Official-layout DA-CLIP whose base CLIP is the tiny CLIP file (as DA-CLIP's base is laion2b)."""
    from safetensors.torch import load_file

    daclip, _ = create_daclip(TINY_CLIP)
    daclip.clip.load_state_dict(load_file(str(clip_file)))
    torch.manual_seed(12)
    for module in daclip.zero_modules:
        torch.nn.init.normal_(module.weight, std=0.05)
    path = clip_file.parent / "daclip_tiny.pt"
    torch.save({"state_dict": to_official_state_dict(daclip)}, path)
    return path


@pytest.fixture(scope="module")
def encoder(clip_file: Path, daclip_file: Path) -> GuidanceEncoder:
    config = GuidanceConfig(clip=ClipSpec(TINY_CLIP, str(clip_file)), daclip_checkpoint=str(daclip_file))
    clip = create_clip(config.clip)
    prompts = text_prompt_set(clip.model, clip.identity, ("a hazy photo.", "a clear photo."))
    return GuidanceEncoder.from_config(config, prompts=prompts)


@pytest.fixture(scope="module")
def net():
    """Tiny net with its zero-initialised guidance projections (DAM/SAM) made live, so guidance matters."""
    torch.manual_seed(13)
    model = create_model("cliphaze-tiny", scan_backend=SCAN).eval()
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(std=0.1)
    return model


def test_dehazer_protocol_shapes_and_guidance(encoder: GuidanceEncoder, net) -> None:
    dehazer = ClipHazeDehazer.from_parts(net, encoder)
    assert dehazer.uses_guidance and dehazer.name == "cliphaze-tiny"
    assert encoder.daclip is not None and encoder.daclip.clip is encoder.clip.model  # one shared base CLIP
    frames = _frames(3)
    frames[1:] = frames[:1].flip(1)  # distinct content (so distinct guidance) in frames 1 and 2
    frames[2] = 255 - frames[2]
    guidance = dehazer.encode_guidance(frames)
    assert guidance.density.shape == (3, 1, 7, 7) and guidance.tokens.shape == (3, 50, 32)
    out = dehazer.restore(frames, guidance)
    assert out.shape == frames.shape and out.dtype == torch.uint8 and out.device == dehazer.device
    assert torch.equal(dehazer.restore(frames, None), out)  # None computes the same guidance
    # Batch-1 guidance is broadcast to every frame.
    one = guidance.select(0)
    assert torch.equal(dehazer.restore(frames, one), dehazer.restore(frames, one.expand(3)))
    assert not torch.equal(dehazer.restore(frames, one)[1:], out[1:])
    # Tokens come from DA-CLIP's controlled pass, not the plain tower.
    plain = GuidanceEncoder(encoder.config, encoder.clip, prompts=encoder.prompts).encode(frames)
    assert (plain.tokens - guidance.tokens).abs().max() > 1e-4
    torch.testing.assert_close(plain.density, guidance.density)


def test_embedded_bundle_round_trip_is_identical(encoder: GuidanceEncoder, net, tmp_path: Path) -> None:
    frames = _frames(2, seed=1)
    expected = ClipHazeDehazer.from_parts(net, encoder).restore(frames, None)
    path = tmp_path / "bundle.safetensors"
    save_bundle(path, net, encoder, embed_towers=True)
    dehazer = ClipHazeDehazer.from_bundle(path, scan_backend=SCAN)
    assert torch.equal(dehazer.restore(frames, None), expected)
    assert dehazer.encoder.daclip.clip is dehazer.encoder.clip.model


def test_bundle_keeps_the_airlight_head(encoder: GuidanceEncoder, tmp_path: Path) -> None:
    torch.manual_seed(14)
    net = create_model(create_model("cliphaze-tiny").config.replace(global_airlight=True), scan_backend=SCAN).eval()
    with torch.no_grad():
        for param in net.parameters():
            if not param.any():
                param.normal_(std=0.1)
    frames = _frames(1, seed=3)
    expected = ClipHazeDehazer.from_parts(net, encoder).restore(frames, None)
    path = tmp_path / "airlight.safetensors"
    save_bundle(path, net, encoder, embed_towers=True)
    loaded = ClipHazeDehazer.from_bundle(path, scan_backend=SCAN)
    assert loaded.net.config.global_airlight and loaded.net.airlight is not None
    assert torch.equal(loaded.restore(frames, None), expected)


def test_referenced_bundle_loads_towers_by_path(encoder: GuidanceEncoder, net, clip_file: Path, tmp_path: Path) -> None:
    frames = _frames(1, size=(24, 31), seed=2)
    expected = ClipHazeDehazer.from_parts(net, encoder).restore(frames, None)
    path = tmp_path / "bundle_ref.safetensors"
    save_bundle(path, net, encoder)
    assert path.stat().st_size < clip_file.stat().st_size  # towers not embedded
    assert torch.equal(ClipHazeDehazer.from_bundle(path, scan_backend=SCAN).restore(frames, None), expected)
    # Relocated tower files are accepted; different CLIP weights are refused.
    moved = tmp_path / "moved_clip.safetensors"
    moved.write_bytes(clip_file.read_bytes())
    assert load_bundle(path, clip_pretrained=str(moved)).encoder.identity.matches(encoder.identity)
    from safetensors.torch import save_file

    torch.manual_seed(99)
    other = tmp_path / "other_clip.safetensors"
    save_file({k: v.contiguous() for k, v in create_clip(ClipSpec(TINY_CLIP)).model.state_dict().items()}, str(other))
    with pytest.raises(BundleError, match="prompts were learned for CLIP|not the one this bundle"):
        load_bundle(path, clip_pretrained=str(other))


def test_bundle_errors(encoder: GuidanceEncoder, net, tmp_path: Path) -> None:
    from cliphaze.checkpoint import write_safetensors

    bad = tmp_path / "not_bundle.safetensors"
    write_safetensors(bad, {"x": torch.zeros(1)}, {"kind": "cliphaze-net", "format_version": "1"})
    with pytest.raises(BundleError, match="not a 'cliphaze-bundle'"):
        load_bundle(bad)
    clip = create_clip(ClipSpec(TINY_CLIP))
    prompts = text_prompt_set(clip.model, clip.identity, ("a hazy photo.", "a clear photo."))
    unreferenced = GuidanceEncoder(GuidanceConfig(clip=ClipSpec(TINY_CLIP)), clip, prompts=prompts)
    with pytest.raises(BundleError, match="random-init"):
        save_bundle(tmp_path / "b.safetensors", net, unreferenced)


def _constant_field_net(net):
    """Copy of the net whose head outputs constant fields K = 0.3, Bb = -0.1 (a perfectly smooth model)."""
    import copy

    smooth = copy.deepcopy(net)
    with torch.no_grad():
        smooth.head.conv.weight.zero_()
        smooth.head.conv.bias.copy_(torch.tensor([0.3, -0.1, -0.1, -0.1]))
    return smooth


def test_scale_below_one_reconstructs_at_full_resolution(encoder: GuidanceEncoder, net) -> None:
    import skimage.data

    photo = torch.from_numpy(skimage.data.astronaut()[::4, ::4].copy()).unsqueeze(0)  # (1, 128, 128, 3) detailed
    dehazer = ClipHazeDehazer.from_parts(_constant_field_net(net), encoder)
    full = dehazer.restore(photo, None)
    half = dehazer.restore(photo, None, scale=0.5)
    assert half.shape == photo.shape
    assert (full.int() - half.int()).abs().max() <= 1  # fields upsampled, image never resized
    # Resizing the output image instead would lose the detail: much larger error.
    small = F.interpolate(frames_to_model(photo), scale_factor=0.5, mode="bilinear", antialias=True)
    resized = model_to_frames(F.interpolate(small * 1.3 + 0.1, size=photo.shape[1:3], mode="bilinear"))
    assert (full.float() - resized.float()).abs().mean() > 5.0


def test_scale_half_close_to_full_for_a_smooth_model(encoder: GuidanceEncoder, net) -> None:
    import copy

    import skimage.data

    smooth = copy.deepcopy(net)
    with torch.no_grad():
        smooth.head.conv.weight.mul_(0.02)  # small, smooth deviations around the constant fields
        smooth.head.conv.bias.copy_(torch.tensor([0.3, -0.1, -0.1, -0.1]))
    photo = torch.from_numpy(skimage.data.chelsea()[::4, ::4].copy()).unsqueeze(0)
    dehazer = ClipHazeDehazer.from_parts(smooth, encoder)
    full = dehazer.restore(photo, None).float()
    half = dehazer.restore(photo, None, scale=0.5).float()
    assert (full - half).abs().mean() < 1.5
    assert (full - photo.float()).abs().mean() > 10 * (full - half).abs().mean()  # the model does change the frame


def test_incompatible_parts_and_bad_arguments(encoder: GuidanceEncoder, net) -> None:
    import dataclasses

    from cliphaze.config import get_config

    tiny = get_config("cliphaze-tiny")
    wide = create_model(tiny.replace(guidance=dataclasses.replace(tiny.guidance, semantic_dim=64)), scan_backend=SCAN)
    with pytest.raises(DehazerConfigError, match="64-d semantic tokens"):
        ClipHazeDehazer.from_parts(wide, encoder)
    with pytest.raises(DehazerConfigError, match="no guidance encoder"):
        ClipHazeDehazer.from_parts(net, None)
    no_density = GuidanceEncoder(GuidanceConfig(clip=encoder.config.clip, use_density=False), encoder.clip)
    with pytest.raises(DehazerConfigError, match="use_density=False"):
        ClipHazeDehazer.from_parts(net, no_density)
    dehazer = ClipHazeDehazer.from_parts(net, encoder)
    with pytest.raises(DehazerConfigError, match="scale"):
        dehazer.restore(_frames(1), None, scale=1.5)
    with pytest.raises(ValueError, match="uint8"):
        dehazer.restore(_frames(1).float(), None)


def test_bf16_precision_runs(encoder: GuidanceEncoder, net) -> None:
    dehazer = ClipHazeDehazer(net, encoder, precision="bf16")
    frames = _frames(1, size=(16, 20))
    out = dehazer.restore(frames, dehazer.encode_guidance(frames))
    ref = ClipHazeDehazer(net, encoder).restore(frames, None)
    assert out.shape == frames.shape and (out.int() - ref.int()).abs().float().mean() < 8


def test_imports_do_not_load_open_clip() -> None:
    code = (
        "import sys, cliphaze, cliphaze.inference, cliphaze.bundle, cliphaze.clip\n"
        "heavy = [m for m in ('open_clip', 'kornia', 'timm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
