"""dcp and none dehazers behind the Dehazer protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cliphaze.baselines import dcp_cpu
from cliphaze.baselines.dcp import (
    DarkChannelDehazer,
    DcpConfig,
    box_mean,
    dark_channel,
    guided_filter_coefficients,
    min_filter,
)
from cliphaze.baselines.none import PassthroughDehazer
from cliphaze.dehazer import Dehazer
from cliphaze.metrics import psnr

AIRLIGHT = 0.85


@pytest.fixture(scope="module")
def clear_and_hazy() -> tuple[np.ndarray, np.ndarray]:
    """skimage's astronaut under homogeneous-by-rows synthetic haze (t from 0.35 at the top to 0.8)."""
    from skimage import data

    clear = data.astronaut()  # (512, 512, 3) uint8
    height = clear.shape[0]
    t = np.linspace(0.35, 0.8, height, dtype=np.float32)[:, None, None]
    hazy = clear.astype(np.float32) / 255.0 * t + AIRLIGHT * (1 - t)
    return clear, np.clip(hazy * 255 + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("make", [DarkChannelDehazer, PassthroughDehazer], ids=["dcp", "none"])
def test_both_keep_the_dehazer_contract(make: type[Dehazer], clear_and_hazy: tuple[np.ndarray, np.ndarray]) -> None:
    """What pipelines rely on (cliphaze.dehazer.Dehazer), by behaviour: uint8 (N, H, W, 3) in and out on the
    dehazer's device at any scale; restore takes encode_guidance's result or None alike (no guidance to cache)."""
    _, hazy = clear_and_hazy
    frames = torch.from_numpy(np.stack([hazy[:48, :64], hazy[100:148, 200:264]]))
    dehazer = make()
    assert dehazer.device == torch.device("cpu") and not dehazer.uses_guidance
    out = dehazer.restore(frames, dehazer.encode_guidance(frames))
    assert out.shape == frames.shape and out.dtype == torch.uint8 and out.device == dehazer.device
    assert torch.equal(out, make().restore(frames, None))
    half = make().restore(frames, None, scale=0.5)
    assert half.shape == frames.shape and half.dtype == torch.uint8


def test_passthrough_is_identity() -> None:
    frames = torch.randint(0, 256, (2, 6, 8, 3), dtype=torch.uint8)
    assert torch.equal(PassthroughDehazer().restore(frames, None), frames)


def test_dcp_removes_haze(clear_and_hazy: tuple[np.ndarray, np.ndarray]) -> None:
    clear, hazy = clear_and_hazy
    out = DarkChannelDehazer().restore(torch.from_numpy(hazy)[None], None)[0].numpy()
    assert out.shape == hazy.shape and out.dtype == np.uint8
    assert psnr(out, clear) > psnr(hazy, clear) + 2.5  # 17.0 dB against 14.0
    assert abs(out.mean() - clear.mean()) < abs(hazy.mean() - clear.mean())  # the airlight veil is gone


def test_dcp_scale_still_removes_haze(clear_and_hazy: tuple[np.ndarray, np.ndarray]) -> None:
    clear, hazy = clear_and_hazy
    out = DarkChannelDehazer().restore(torch.from_numpy(hazy)[None], None, scale=0.25)[0].numpy()
    assert out.shape == hazy.shape
    assert psnr(out, clear) > psnr(hazy, clear) + 3.0


def test_dcp_airlight_estimate_and_ema(clear_and_hazy: tuple[np.ndarray, np.ndarray]) -> None:
    _, hazy = clear_and_hazy
    dcp = DarkChannelDehazer(config=DcpConfig(airlight_ema_weight=0.5))
    dcp.restore(torch.from_numpy(hazy)[None], None)
    assert dcp._airlight is not None
    first = dcp._airlight.clone()
    assert torch.all((first / 255.0 - AIRLIGHT).abs() < 0.1)
    dark = torch.from_numpy((hazy // 3).copy())[None]  # a much darker frame
    dcp.restore(dark, None)
    one_frame = DarkChannelDehazer()
    one_frame.restore(dark, None)
    assert one_frame._airlight is not None
    # EMA with weight 0.5: halfway between the previous state and the new frame's estimate
    assert torch.allclose(dcp._airlight, (first + one_frame._airlight) / 2, atol=1e-3)
    dcp.reset()  # an independent image: the smoothed airlight of earlier frames no longer applies
    assert torch.equal(dcp.restore(dark, None), DarkChannelDehazer().restore(dark, None))


def test_dcp_batch_matches_sequential_calls(clear_and_hazy: tuple[np.ndarray, np.ndarray]) -> None:
    _, hazy = clear_and_hazy
    frames = torch.stack([torch.from_numpy(hazy), torch.from_numpy(hazy[::-1].copy())])
    batched = DarkChannelDehazer().restore(frames, None)
    seq = DarkChannelDehazer()
    one_by_one = torch.cat([seq.restore(frames[i : i + 1], None) for i in range(2)])
    assert (batched.int() - one_by_one.int()).abs().max() <= 1


def test_dcp_density_guidance(clear_and_hazy: tuple[np.ndarray, np.ndarray]) -> None:
    _, hazy = clear_and_hazy
    g = DarkChannelDehazer().encode_guidance(torch.from_numpy(hazy)[None])
    assert g.density is not None and g.density.shape == (1, 1, 7, 7)
    top, bottom = g.density[0, 0, 0].mean().item(), g.density[0, 0, -1].mean().item()
    assert 0.0 <= bottom < top <= 1.0  # the top rows are hazier


def test_dark_channel_is_a_min_filter() -> None:
    images = torch.ones(1, 3, 9, 9)
    images[0, 1, 4, 4] = 0.0
    dark = dark_channel(images, 3)
    assert dark[0, 0, 3:6, 3:6].eq(0).all() and dark[0, 0, 0, 0] == 1 and dark[0, 0, 2, 4] == 1


def test_dcp_config_checks() -> None:
    with pytest.raises(ValueError):
        DcpConfig(omega=0.0)
    with pytest.raises(ValueError):
        DcpConfig(t0=1.0)


@pytest.mark.parametrize("size", [(512, 512), (361, 203), (120, 90)])  # sub 3, sub 3 with remainders, sub 1
def test_dcp_numba_passes_match_the_torch_path(clear_and_hazy: tuple[np.ndarray, np.ndarray], size) -> None:
    _, hazy = clear_and_hazy
    frames = torch.from_numpy(np.ascontiguousarray(hazy[: size[0], : size[1]]))[None].repeat(2, 1, 1, 1)
    frames[1] = frames[1].flip(0)
    assert dcp_cpu.get_kernels() is not None
    fused = DarkChannelDehazer().restore(frames, None)
    plain = DarkChannelDehazer(use_numba=False).restore(frames, None)
    assert fused.shape == plain.shape == frames.shape and fused.dtype == torch.uint8
    assert (fused.int() - plain.int()).abs().max() <= 1  # float rounding order only
    assert (fused.int() - frames.int()).abs().float().mean() > 5  # and it changed the frames


def test_dcp_block_mean_kernel_is_avg_pool() -> None:
    frames = torch.randint(0, 256, (2, 13, 22, 3), dtype=torch.uint8)
    kernels = dcp_cpu.get_kernels()
    assert kernels is not None
    got = dcp_cpu.block_mean(kernels, frames, 4)  # 13x22 -> 3x5, the remainders dropped as avg_pool2d does
    want = torch.nn.functional.avg_pool2d(frames.permute(0, 3, 1, 2).float(), 4).permute(0, 2, 3, 1)
    assert got.shape == (2, 3, 5, 3) and torch.allclose(got, want, atol=1e-4)


def test_dcp_without_numba_uses_the_torch_path(clear_and_hazy, monkeypatch: pytest.MonkeyPatch) -> None:
    _, hazy = clear_and_hazy
    frames = torch.from_numpy(hazy)[None]
    want = DarkChannelDehazer(use_numba=False).restore(frames, None)
    monkeypatch.setattr(dcp_cpu, "get_kernels", lambda: None)  # numba missing or failing to compile
    assert torch.equal(DarkChannelDehazer().restore(frames, None), want)


def test_box_mean_and_min_filter_match_their_definitions() -> None:
    from kornia.filters import box_blur

    x = torch.rand(2, 1, 37, 53)
    assert torch.allclose(box_mean(x, 6), box_blur(x, 13, "reflect"), atol=1e-5)
    assert torch.equal(min_filter(x, 5), -torch.nn.functional.max_pool2d(-x, 5, 1, 2))
    assert torch.equal(min_filter(x, 1), x)


def test_guided_filter_reproduces_a_linear_function_of_the_guide() -> None:
    guide = torch.rand(1, 1, 40, 60) * 255
    coef_a, coef_b = guided_filter_coefficients(guide, 0.002 * guide + 0.3, radius=5, eps=1e-6)
    assert torch.allclose(coef_a, torch.full_like(coef_a, 0.002), atol=1e-5)
    assert torch.allclose(coef_a * guide + coef_b, 0.002 * guide + 0.3, atol=1e-4)
    flat_a, flat_b = guided_filter_coefficients(guide, torch.full_like(guide, 0.7), radius=50, eps=1.0)
    assert flat_a.abs().max() < 1e-6 and torch.allclose(flat_b, torch.full_like(flat_b, 0.7))  # radius cut to fit


@pytest.mark.parametrize("shape", [(2, 45, 80), (1, 7, 5), (3, 2, 30)])  # radius cut to the image on the small ones
def test_dcp_estimate_kernels_match_the_torch_steps(shape: tuple[int, int, int]) -> None:
    kernels = dcp_cpu.get_kernels()
    assert kernels is not None
    n, h, w = shape
    generator = torch.Generator().manual_seed(h * w)
    ramp = torch.linspace(0.0, 150.0, w)[None, None, :, None]  # haze-like structure: t follows the grey level
    small = torch.rand(n, h, w, 3, generator=generator) * 60 + 40 + ramp  # (N, h, w, 3) as block_mean gives it
    planar = small.permute(0, 3, 1, 2)
    assert torch.equal(dcp_cpu.dark_channel(kernels, small, 9), dark_channel(planar, 9))  # exact: same top-k
    airlight = torch.tensor([[220.0, 230.0, 240.0]]).repeat(n, 1) - torch.arange(n)[:, None]
    luma = (0.299, 0.587, 0.114)
    mean_a, mean_b, grey = dcp_cpu.guided(kernels, small, airlight, omega=0.95, patch=5, luma=luma, radius=6, eps=65.0)
    want_grey = torch.einsum("nchw,c->nhw", planar, torch.tensor(luma)).unsqueeze(1)
    t_raw = 1.0 - 0.95 * dark_channel(planar / airlight[:, :, None, None], 5)
    want_a, want_b = guided_filter_coefficients(want_grey, t_raw, 6, 65.0)
    assert mean_a.shape == mean_b.shape == grey.shape == (n, 1, h, w)
    assert torch.allclose(grey, want_grey, atol=1e-3)
    assert want_a.abs().max() > 2e-4  # the fields are not trivially flat (|a| <= 1 / 255 here)
    assert (mean_a - want_a).abs().max() <= 1e-3 * want_a.abs().max()
    assert (mean_b - want_b).abs().max() <= 1e-3 * want_b.abs().max()
