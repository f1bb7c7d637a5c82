"""ClipHazeNet, the factory and the complexity table (tiny variant, CPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from cliphaze.complexity import count_gmacs, count_params, format_model_table, model_table
from cliphaze.config import VARIANTS, ClipHazeConfig, ConfigError, StageConfig, get_config
from cliphaze.factory import create_model, list_models
from cliphaze.layers.ss2d import SS2D
from cliphaze.layers.window_attention import WindowAttention
from cliphaze.model import AirlightHead, ClipHazeNet, GuidanceError, reconstruct

TINY = VARIANTS["cliphaze-tiny"]
SEMANTIC = TINY.guidance.semantic_dim


def _tiny(**guidance: object) -> ClipHazeConfig:
    cfg = TINY.replace(ssm=dataclasses.replace(TINY.ssm, scan_backend="chunked"))
    if guidance:
        cfg = cfg.replace(guidance=dataclasses.replace(cfg.guidance, **guidance))
    return cfg


def _perturb_zero_init(module: nn.Module) -> None:
    """Give zero-initialised parameters (CAM logits) random values, as training would."""
    with torch.no_grad():
        for p in module.parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(0.0, 0.3)


@pytest.fixture(scope="module")
def model() -> ClipHazeNet:
    torch.manual_seed(0)
    net = ClipHazeNet(_tiny()).eval()
    _perturb_zero_init(net)
    return net


@pytest.mark.parametrize("size", [(1, 1), (7, 13), (33, 65), (16, 40), (40, 9)])
def test_any_size_in_same_size_out(model: ClipHazeNet, size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *size) * 2 - 1
    with torch.no_grad():
        k, bb = model.forward_fields(x, torch.rand(2, 1, 7, 7), torch.randn(2, 5, SEMANTIC))
        y = reconstruct(x, k, bb)
    assert k.shape == (2, 1, *size) and bb.shape == (2, 3, *size) and y.shape == x.shape
    assert torch.isfinite(y).all()


def test_reconstruct_inverts_the_scattering_model_with_the_documented_fields() -> None:
    """Haze I = J t + A (1 - t) in [0, 1]; in [-1, 1] the fields K = 1/t - 1 and Bb = K (2A - 1) restore J."""
    torch.manual_seed(0)
    clear = torch.rand(2, 3, 6, 5)
    t = torch.rand(2, 1, 6, 5) * 0.8 + 0.2
    airlight = torch.rand(2, 3, 1, 1) * 0.3 + 0.7
    hazy = clear * t + airlight * (1 - t)
    k = 1 / t - 1
    restored = reconstruct(hazy * 2 - 1, k, k * (2 * airlight - 1))
    torch.testing.assert_close((restored + 1) / 2, clear)
    # No haze (t = 1): K = 0, Bb = 0 leave the input as it is.
    x = hazy * 2 - 1
    torch.testing.assert_close(reconstruct(x, torch.zeros_like(t), torch.zeros_like(x)), x)


def test_gradient_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    net = ClipHazeNet(_tiny())
    _perturb_zero_init(net)
    x = torch.rand(2, 3, 12, 10) * 2 - 1
    net(x, torch.rand(2, 1, 7, 7), torch.randn(2, 5, SEMANTIC)).square().mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    assert dead == []


def test_airlight_head_starts_neutral_then_adds_one_airlight_per_image() -> None:
    torch.manual_seed(0)
    plain = ClipHazeNet(_tiny()).eval()
    _perturb_zero_init(plain)
    with_head = ClipHazeNet(_tiny().replace(global_airlight=True)).eval()
    result = with_head.load_state_dict(plain.state_dict(), strict=False)
    assert result.missing_keys and all(k.startswith("airlight.") for k in result.missing_keys)
    assert not result.unexpected_keys
    x = torch.rand(2, 3, 19, 23) * 2 - 1
    x[1] = x[1].flip(-1) * 0.5  # different content per image
    density, tokens = torch.rand(2, 1, 7, 7), torch.randn(2, 5, SEMANTIC)
    with torch.no_grad():
        k0, bb0 = plain.forward_fields(x, density, tokens)
        torch.testing.assert_close(with_head.forward_fields(x, density, tokens), (k0, bb0))  # zero-started
        with_head.airlight.mlp[-1].weight.normal_(0.0, 0.3)
        k1, bb1 = with_head.forward_fields(x, density, tokens)
    torch.testing.assert_close(k1, k0)  # only the offset changes, by K times one airlight per image
    offset = bb1 - bb0
    per_image = (offset * k0).sum(dim=(2, 3), keepdim=True) / k0.square().sum(dim=(2, 3), keepdim=True)  # LSQ fit
    torch.testing.assert_close(offset, k0 * per_image, atol=1e-5, rtol=1e-4)
    assert offset.abs().max() > 1e-2 and (per_image[0] - per_image[1]).abs().max() > 1e-3


def test_airlight_head_sees_the_colour_of_the_haziest_part() -> None:
    head = AirlightHead(dim=4, hidden=8)
    seen: list[torch.Tensor] = []
    head.mlp.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.full((2, 3, 32, 32), -0.5)
    x[:, :, :16, :16] = torch.tensor([0.9, 0.8, 0.7])[:, None, None]  # bright top-left quarter
    density = torch.zeros(2, 1, 2, 2)
    density[0, 0, 0, 0] = 1.0  # image 0: haze only over the bright quarter
    density[1, 0, 1, 1] = 1.0  # image 1: haze only over the dark quarter
    head(torch.randn(2, 4, 4, 4), x, density)
    head(torch.randn(2, 4, 4, 4), x, None)
    mean, coarse_max, coarse_min, hazy = seen[0][:, 8:].split(3, dim=1)
    torch.testing.assert_close(mean[0], (torch.tensor([0.9, 0.8, 0.7]) - 1.5) / 4)
    torch.testing.assert_close(coarse_max[0], torch.tensor([0.9, 0.8, 0.7]))
    torch.testing.assert_close(coarse_min[0], torch.full((3,), -0.5))
    torch.testing.assert_close(hazy, torch.stack([torch.tensor([0.9, 0.8, 0.7]), torch.full((3,), -0.5)]))
    torch.testing.assert_close(seen[1][:, -3:], mean)  # no density map: the mean colour stands in


def test_batch_one_guidance_broadcasts(model: ClipHazeNet) -> None:
    x = torch.rand(3, 3, 9, 11) * 2 - 1
    density, tokens = torch.rand(1, 1, 7, 7), torch.randn(1, 5, SEMANTIC)
    with torch.no_grad():
        y1 = model(x, density, tokens)
        yn = model(x, density.repeat(3, 1, 1, 1), tokens.repeat(3, 1, 1))
    torch.testing.assert_close(y1, yn)


def test_guidance_changes_the_output_and_coarse_size_is_free(model: ClipHazeNet) -> None:
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    tokens = torch.randn(1, 5, SEMANTIC)
    with torch.no_grad():
        const7 = model(x, torch.full((1, 1, 7, 7), 0.3), tokens)
        const3 = model(x, torch.full((1, 1, 3, 5), 0.3), tokens)  # any coarse size
        other = model(x, torch.rand(1, 1, 7, 7), tokens)
        no_tokens = model(x, torch.full((1, 1, 7, 7), 0.3), None)
        nothing = model(x)
    torch.testing.assert_close(const7, const3)
    assert not torch.allclose(const7, other)
    assert not torch.allclose(const7, no_tokens)
    assert torch.isfinite(nothing).all()


def test_untrained_network_ignores_guidance() -> None:
    """Zero-initialised CAM logits: guidance or not, every block blends its paths 50/50."""
    torch.manual_seed(0)
    net = ClipHazeNet(_tiny()).eval()
    x = torch.rand(1, 3, 10, 12) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(net(x, torch.rand(1, 1, 7, 7), torch.randn(1, 5, SEMANTIC)), net(x))


def test_guidance_shape_errors(model: ClipHazeNet) -> None:
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(GuidanceError, match="tokens must be"):
        model(x, tokens=torch.randn(2, 5, SEMANTIC + 1))
    with pytest.raises(GuidanceError, match="batch 3"):
        model(x, density=torch.rand(3, 1, 7, 7))
    with pytest.raises(GuidanceError, match="density must be"):
        model(x, density=torch.rand(2, 7, 7))
    with pytest.raises(ValueError, match="input must be"):
        model(torch.rand(2, 1, 8, 8))


def _count(net: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


@pytest.mark.parametrize(
    ("switch", "attn_layers", "ssm_layers"),
    [({"path": "attn"}, 5, 0), ({"path": "ssm"}, 0, 5), ({"cam_mode": "mean"}, 5, 5), ({"cam_mode": "sum"}, 5, 5)],
)
def test_model_ablation_switches(model: ClipHazeNet, switch: dict, attn_layers: int, ssm_layers: int) -> None:
    torch.manual_seed(0)
    net = ClipHazeNet(_tiny(**switch)).eval()
    assert _count(net, WindowAttention) == attn_layers and _count(net, SS2D) == ssm_layers
    assert count_params(net) < count_params(model)
    x = torch.rand(1, 3, 9, 9) * 2 - 1
    with torch.no_grad():
        assert net(x, torch.rand(1, 1, 7, 7), torch.randn(1, 5, SEMANTIC)).shape == x.shape


def test_per_stage_use_ssm() -> None:
    cfg = _tiny()
    stages = tuple(dataclasses.replace(s, use_ssm=i in (1, 2, 3)) for i, s in enumerate(cfg.stages))
    net = ClipHazeNet(cfg.replace(stages=stages))
    assert _count(net, SS2D) == 3
    assert net(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8, 8)


def test_config_checks_and_dict_round_trip() -> None:
    for cfg in VARIANTS.values():
        assert ClipHazeConfig.from_dict(cfg.to_dict()) == cfg
    with_head = TINY.replace(global_airlight=True)
    assert ClipHazeConfig.from_dict(with_head.to_dict()) == with_head
    old_file = {k: v for k, v in TINY.to_dict().items() if k not in ("global_airlight", "airlight_hidden")}
    assert ClipHazeConfig.from_dict(old_file) == TINY  # bundles written before the airlight head still load
    with pytest.raises(ConfigError, match="airlight_hidden"):
        TINY.replace(airlight_hidden=0)
    with pytest.raises(ConfigError, match="mirror"):
        TINY.replace(stages=(StageConfig(8, 1), StageConfig(16, 1), StageConfig(4, 1)))
    with pytest.raises(ConfigError, match="odd number"):
        TINY.replace(stages=(StageConfig(8, 1), StageConfig(8, 1)))
    with pytest.raises(ConfigError, match="cam_mode"):
        dataclasses.replace(TINY.guidance, cam_mode="max")
    with pytest.raises(ConfigError, match="unknown|invalid"):
        ClipHazeConfig.from_dict({**TINY.to_dict(), "bogus": 1})
    assert [s.depth for s in get_config("cliphaze-s").stages] == [8, 8, 8, 4, 4]
    assert [s.dim for s in get_config("cliphaze-b").stages] == [24, 48, 96, 48, 24]


def test_factory() -> None:
    assert list_models() == ["cliphaze-tiny", "cliphaze-t", "cliphaze-s", "cliphaze-b"]
    with pytest.raises(ValueError, match="unknown CLIPHaze variant 'cliphaze-xl'"):
        create_model("cliphaze-xl")
    with pytest.raises(ValueError, match="unknown scan backend"):
        create_model("cliphaze-tiny", scan_backend="warp-drive")
    with pytest.raises(ValueError, match="needs a variant name"):
        create_model()
    torch.manual_seed(0)
    ref = create_model("cliphaze-tiny", scan_backend="reference", dtype=torch.float64)
    assert ref.config.ssm.scan_backend == "reference" and next(ref.parameters()).dtype == torch.float64
    chunked = create_model(_tiny(), dtype=torch.float64)
    chunked.load_state_dict(ref.state_dict())
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(chunked(x), ref(x), atol=1e-6, rtol=1e-5)


def test_count_gmacs_extrapolation_matches_a_full_count() -> None:
    """count_gmacs runs one block per stage and adds the rest; a deep, shifted config checks that."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = _tiny().replace(
        stages=tuple(dataclasses.replace(s, depth=3) for s in TINY.stages),
        attention=dataclasses.replace(TINY.attention, shift=True, impl="math"),
    )
    h, w = 21, 30
    with torch.device("meta"):
        net = ClipHazeNet(cfg)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.empty(1, 3, h, w, device="meta"), torch.empty(1, 1, 7, 7, device="meta"),
            torch.empty(1, 50, SEMANTIC, device="meta"))
    hp, wp = 24, 32  # padded to a multiple of 4
    scan = sum(
        3 * 4 * 2 * s.dim * (hp >> lvl) * (wp >> lvl) * cfg.ssm.d_state * s.depth
        for s, lvl in zip(cfg.stages, (0, 1, 2, 1, 0))
    )
    expected = (counter.get_total_flops() / 2 + scan) / 1e9
    assert count_gmacs(cfg, h, w) == pytest.approx(expected, rel=1e-9)


def test_model_table() -> None:
    rows = model_table(["cliphaze-tiny", "cliphaze-t"])
    tiny, t = rows
    assert tiny.params == count_params(ClipHazeNet(TINY))
    assert t.params > tiny.params and t.gmacs_256 > tiny.gmacs_256
    ratio = t.gmacs_1080p / t.gmacs_256  # cost is linear in the pixel count (up to padding)
    assert 1920 * 1080 / 256**2 * 0.95 < ratio < 1920 * 1088 / 256**2 * 1.05
    text = format_model_table(rows)
    assert "cliphaze-t" in text and "GMACs@1920x1080" in text


@pytest.mark.parametrize("name", ["cliphaze-t", "cliphaze-s"])
def test_4k_and_odd_sizes_trace_on_the_meta_device(name: str) -> None:
    """Shapes only (no arithmetic): the padding/cropping plan holds for 4K and odd sizes of real variants."""
    with torch.device("meta"):
        net = ClipHazeNet(VARIANTS[name])
        for h, w in [(2160, 3840), (1081, 1917)]:
            tokens = torch.empty(1, 50, VARIANTS[name].guidance.semantic_dim)
            k, bb = net.forward_fields(torch.empty(1, 3, h, w), torch.empty(1, 1, 7, 7), tokens)
            assert k.shape == (1, 1, h, w) and bb.shape == (1, 3, h, w)


def test_reconstruction_head_runs_in_fp32_under_bf16_autocast() -> None:
    """Issue 15, 3: under bf16 the network body may round, but K, Bb (head and airlight term) stay fp32."""
    torch.manual_seed(0)
    net = ClipHazeNet(_tiny().replace(global_airlight=True)).eval()
    _perturb_zero_init(net)
    seen: list[torch.dtype] = []
    net.head.register_forward_hook(lambda _m, args, out: seen.extend([args[0].dtype, out.dtype]))
    x = torch.rand(1, 3, 16, 24) * 2 - 1
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        k, bb = net.forward_fields(x)
    assert seen == [torch.float32, torch.float32] and k.dtype == bb.dtype == torch.float32
    with torch.no_grad():
        k32, bb32 = net.forward_fields(x)
    torch.testing.assert_close(k, k32, atol=0.05, rtol=0.05)  # only the body rounded to bf16
