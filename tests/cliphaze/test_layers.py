"""Layers of the CLIPHaze network: padding, window attention, SS2D, CAM, SKFusion (cross-scan: ops/test_cross_scan)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from cliphaze.config import AttentionConfig, GuidanceInputConfig, SSMConfig
from cliphaze.layers.cam import ClipAggregation
from cliphaze.layers.padding import crop_to, pad_to_multiple, reflect_pad
from cliphaze.layers.ss2d import SS2D
from cliphaze.layers.unet import SKFusion
from cliphaze.layers.window_attention import (
    WindowAttention,
    log_relative_positions,
    window_partition,
    window_reverse,
)


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (3, 2), (7, 13), (16, 16), (33, 65)])
@pytest.mark.parametrize("multiple", [4, 8])
def test_pad_then_crop_is_identity(size: tuple[int, int], multiple: int) -> None:
    x = torch.randn(2, 3, *size)
    padded, orig = pad_to_multiple(x, multiple)
    assert padded.shape[-2] % multiple == 0 and padded.shape[-1] % multiple == 0
    assert padded.shape[-2] - size[0] < multiple and padded.shape[-1] - size[1] < multiple
    assert orig == size
    assert torch.equal(crop_to(padded, orig), x)


def test_reflect_pad_matches_torch_where_torch_can_and_extends_tiny_inputs() -> None:
    x = torch.randn(1, 2, 6, 7)
    assert torch.equal(reflect_pad(x, 1, 3, 2, 5), F.pad(x, (2, 5, 1, 3), mode="reflect"))
    tiny = torch.randn(1, 2, 1, 2)
    out = reflect_pad(tiny, 0, 7, 0, 6)  # pads larger than the sides
    assert out.shape == (1, 2, 8, 8)
    assert torch.equal(out[..., 0, :], out[..., 5, :])  # a single row is replicated
    assert torch.equal(out[..., 0, 2], tiny[..., 0, 0])  # 2 columns: reflected back and forth


def test_window_partition_round_trip() -> None:
    x = torch.randn(2, 8, 12, 5)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 2 * 3, 16, 5)
    assert torch.equal(windows[0], x[0, :4, :4].reshape(16, 5))
    assert torch.equal(window_reverse(windows, 4, 8, 12), x)


def test_log_relative_positions() -> None:
    rel = log_relative_positions(3)
    assert rel.shape == (9, 9, 2)
    assert torch.allclose(rel[0, 1], torch.tensor([0.0, -math.log(2.0)]))  # token 0 vs token (0, 1)
    assert torch.allclose(rel[8, 0], torch.tensor([math.log(3.0), math.log(3.0)]))
    assert torch.equal(rel.diagonal(dim1=0, dim2=1), torch.zeros(2, 9))


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("heads", [1, 2])
def test_sdpa_and_math_attention_agree(shift: bool, heads: int) -> None:
    torch.manual_seed(0)
    attn = WindowAttention(8, AttentionConfig(window_size=4, num_heads=heads, impl="sdpa"), shift=shift)
    x = torch.randn(2, 7, 13, 8, requires_grad=True)
    y_sdpa = attn(x)
    (g_sdpa,) = torch.autograd.grad(y_sdpa.square().sum(), x)
    attn.impl = "math"
    y_math = attn(x)
    (g_math,) = torch.autograd.grad(y_math.square().sum(), x)
    assert y_sdpa.shape == x.shape
    torch.testing.assert_close(y_sdpa, y_math, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_sdpa, g_math, atol=1e-5, rtol=1e-5)


def test_window_attention_is_local_without_shift() -> None:
    attn = WindowAttention(4, AttentionConfig(window_size=4, impl="math"))
    x = torch.randn(1, 8, 8, 4)
    y = attn(x)
    x2 = x.clone()
    x2[:, 4:, 4:] += 1.0  # change only the bottom-right window
    y2 = attn(x2)
    assert torch.equal(y[:, :4, :4], y2[:, :4, :4])
    assert not torch.allclose(y[:, 4:, 4:], y2[:, 4:, 4:])


def test_ss2d_init_and_shape() -> None:
    cfg = SSMConfig(d_state=4, scan_backend="chunked")
    layer = SS2D(8, cfg)
    dt = F.softplus(layer.dt_projs_bias)
    assert dt.min() >= cfg.dt_init_floor * (1 - 1e-5) and dt.max() <= cfg.dt_max * (1 + 1e-5)
    assert torch.allclose(-torch.exp(layer.A_logs), -torch.arange(1.0, 5.0).expand(4 * 16, 4))
    assert torch.equal(layer.Ds, torch.ones(4 * 16))
    assert layer.dt_rank == 1 and layer.x_proj_weight.shape == (4, 1 + 8, 16)
    y = layer(torch.randn(2, 5, 6, 8))
    assert y.shape == (2, 5, 6, 8) and torch.isfinite(y).all()


def test_ss2d_backends_agree_and_scan_sees_the_whole_image() -> None:
    torch.manual_seed(0)
    layer = SS2D(8, SSMConfig(d_state=4, scan_backend="reference"))
    x = torch.randn(1, 4, 5, 8)
    y_ref = layer(x)
    layer.scan_backend = "chunked"
    torch.testing.assert_close(layer(x), y_ref, atol=1e-5, rtol=1e-4)
    x2 = x.clone()
    x2[:, 0, 0] += 1.0  # a far corner changes (receptive field is global through the scan)
    assert not torch.allclose(layer(x2)[:, -1, -1], y_ref[:, -1, -1])


def _perturb_zero_init(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(0.0, 0.5)


def _cam(**kw: object) -> ClipAggregation:
    cfg = dataclasses.replace(GuidanceInputConfig(semantic_dim=12), **kw)
    return ClipAggregation(8, cfg, eps=1e-6, impl="sdpa")


def _cam_inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(2, 5, 6, 8, generator=g),
        torch.randn(2, 5, 6, 8, generator=g),
        torch.rand(2, 5, 6, 1, generator=g),
        torch.randn(2, 7, 12, generator=g),
    )


def test_untrained_cam_is_an_even_blend() -> None:
    cam = _cam()
    f_t, f_m, density, tokens = _cam_inputs()
    weights = cam.path_weights(f_t, f_m, density, tokens)
    assert torch.equal(weights, torch.full_like(weights, 0.5))
    torch.testing.assert_close(cam(f_t, f_m, density, tokens), cam.proj(0.5 * (f_t + f_m)))


def test_trained_cam_weights_follow_density_and_tokens() -> None:
    torch.manual_seed(0)
    cam = _cam()
    _perturb_zero_init(cam)
    f_t, f_m, density, tokens = _cam_inputs()
    base = cam.path_weights(f_t, f_m, density, tokens)
    assert ((base > 0) & (base < 1)).all() and base.std() > 0
    assert not torch.allclose(cam.path_weights(f_t, f_m, 1 - density, tokens), base)
    assert not torch.allclose(cam.path_weights(f_t, f_m, density, tokens.flip(1) + 1), base)
    # Without guidance only the learned bias is left: weights are constant over pixels.
    fallback = cam.path_weights(f_t, f_m, None, None)
    assert torch.allclose(fallback, fallback[:1, :1, :1].expand_as(fallback))
    assert not torch.allclose(fallback, torch.full_like(fallback, 0.5))


def test_cam_ablation_switches() -> None:
    torch.manual_seed(0)
    f_t, f_m, density, tokens = _cam_inputs()
    no_dam = _cam(use_dam=False)
    _perturb_zero_init(no_dam)
    assert no_dam.dam is None and no_dam.sam is not None
    torch.testing.assert_close(no_dam(f_t, f_m, density, tokens), no_dam(f_t, f_m, 1 - density, tokens))
    no_sam = _cam(use_sam=False)
    _perturb_zero_init(no_sam)
    assert no_sam.sam is None and no_sam.dam is not None
    torch.testing.assert_close(no_sam(f_t, f_m, density, tokens), no_sam(f_t, f_m, density, tokens + 1))
    assert not torch.allclose(no_sam(f_t, f_m, density, tokens), no_sam(f_t, f_m, 1 - density, tokens))
    mean = _cam(cam_mode="mean")
    assert mean.dam is None and mean.sam is None and mean.logit_bias is None
    torch.testing.assert_close(mean(f_t, f_m, density, tokens), mean.proj(0.5 * (f_t + f_m)))
    total = _cam(cam_mode="sum")
    torch.testing.assert_close(total(f_t, f_m, density, tokens), total.proj(f_t + f_m))


def test_cam_math_and_sdpa_agree() -> None:
    torch.manual_seed(0)
    cam = _cam()
    _perturb_zero_init(cam)
    f_t, f_m, density, tokens = _cam_inputs()
    y = cam(f_t, f_m, density, tokens)
    assert cam.sam is not None
    cam.sam.impl = "math"
    torch.testing.assert_close(cam(f_t, f_m, density, tokens), y, atol=1e-5, rtol=1e-5)


def test_skfusion_of_equal_inputs_is_identity_and_weights_sum_to_one() -> None:
    torch.manual_seed(0)
    fusion = SKFusion(8, reduction=8, min_hidden=4)
    a = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(fusion(a, a), a)
    b = torch.randn(2, 8, 5, 5)
    out = fusion(a, b)
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    assert ((out >= lo - 1e-6) & (out <= hi + 1e-6)).all()  # a convex combination per channel
