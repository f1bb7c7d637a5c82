"""Synthetic haze obeys the atmospheric scattering model, for both haze kinds."""

from __future__ import annotations

import pytest
import torch

from cliphaze.train.synthetic import (
    HAZE_KINDS,
    HazeConfig,
    SyntheticHazeError,
    apply_scattering,
    recover_clear,
    smooth_noise,
    synthesize_haze,
)


def _clear(seed: int = 0) -> torch.Tensor:
    return torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", HAZE_KINDS)
def test_clear_is_exactly_recoverable(kind: str) -> None:
    config = HazeConfig()
    clear = _clear()
    s = synthesize_haze(clear, torch.Generator().manual_seed(1), config, kind=kind)
    assert s.kind == kind
    assert s.hazy.shape == (3, 40, 56) and s.transmission.shape == (1, 40, 56) and s.airlight.shape == (3,)
    torch.testing.assert_close(s.hazy, apply_scattering(clear, s.transmission, s.airlight), rtol=0, atol=0)
    torch.testing.assert_close(recover_clear(s.hazy, s.transmission, s.airlight), clear, rtol=0, atol=2e-6)
    assert float(s.transmission.min()) >= config.t_min and float(s.transmission.max()) <= 1.0
    assert 0.0 <= float(s.hazy.min()) and float(s.hazy.max()) <= 1.0
    assert float(s.airlight.min()) >= config.airlight_range[0] - config.airlight_tint


def test_haze_kinds_differ_in_spatial_structure() -> None:
    """Homogeneous t follows the depth proxy; non-homogeneous t varies more across the image."""
    clear = torch.full((3, 64, 64), 0.5)  # flat scene: the depth proxy is the gradient/plane only
    config = HazeConfig()
    nh = [synthesize_haze(clear, torch.Generator().manual_seed(s), config, kind="nonhomogeneous") for s in range(8)]
    # NH fields change along x too; homogeneous haze of a flat scene is nearly a function of the row
    h = [synthesize_haze(clear, torch.Generator().manual_seed(s), config, kind="homogeneous") for s in range(8)]
    nh_x = torch.stack([x.transmission.std(dim=-1).mean() for x in nh]).mean()
    h_x = torch.stack([x.transmission.std(dim=-1).mean() for x in h]).mean()
    assert float(nh_x) > float(h_x)


def test_same_seed_same_haze_and_hazy_is_hazier() -> None:
    clear = _clear(3)
    a = synthesize_haze(clear, torch.Generator().manual_seed(7), HazeConfig())
    b = synthesize_haze(clear, torch.Generator().manual_seed(7), HazeConfig())
    assert torch.equal(a.hazy, b.hazy) and a.kind == b.kind
    # haze lifts the dark values toward the airlight
    assert float(a.hazy.min()) > float(clear.min())


def test_smooth_noise_is_low_frequency() -> None:
    field = smooth_noise(64, 96, torch.Generator().manual_seed(0), cells=3, octaves=2)
    assert field.shape == (1, 1, 64, 96)
    assert float(field.min()) == 0.0 and float(field.max()) == 1.0
    white = torch.rand(64, 96, generator=torch.Generator().manual_seed(0))
    assert float(field[0, 0].diff(dim=-1).abs().mean()) < 0.2 * float(white.diff(dim=-1).abs().mean())


def test_bad_options_are_rejected() -> None:
    with pytest.raises(SyntheticHazeError, match="unknown haze kind"):
        HazeConfig(kinds=("fog",))  # type: ignore[arg-type]
    with pytest.raises(SyntheticHazeError, match="t_min"):
        HazeConfig(t_min=0.0)
    with pytest.raises(SyntheticHazeError, match=r"\(3, H, W\)"):
        synthesize_haze(torch.rand(4, 8, 8), torch.Generator(), HazeConfig())
