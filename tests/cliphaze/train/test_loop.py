"""Stage-2 loop on CPU with the tiny variant: the loss goes down, and resume is bit-identical."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cliphaze.guidance_types import Guidance
from cliphaze.train.config import CheckpointConfig, OptimConfig, TrainConfig, ValidationConfig
from cliphaze.train.data import AugmentConfig, SyntheticHazeDataset
from cliphaze.train.loop import build_objects, lr_factor, train_network
from cliphaze.train.state import ResumeError, latest_state, read_state
from cliphaze.train.synthetic import HazeConfig


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(4):  # smooth random scenes: learnable in a few steps
        small = rng.random((6, 6, 3))
        big = F.interpolate(torch.from_numpy(small).permute(2, 0, 1)[None], size=(48, 48), mode="bicubic")[0]
        out.append((big.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    return out


def _density(hazy: torch.Tensor) -> Guidance:
    """A deterministic stand-in for CLIP guidance: brightness pooled to a 4x4 grid."""
    return Guidance(density=F.adaptive_avg_pool2d(hazy.mean(1, keepdim=True), (4, 4)))


def _config(tmp_path: Path, steps: int, **kw) -> TrainConfig:
    return TrainConfig(
        variant="cliphaze-tiny",
        steps=steps,
        batch_size=2,
        augment=AugmentConfig(crop_px=16),
        optim=OptimConfig(lr=kw.pop("lr", 2e-3), warmup_steps=1),
        ema_decay=0.9,
        device="cpu",
        checkpoint=CheckpointConfig(out_dir=str(tmp_path), every_steps=kw.pop("every", 2), keep_last=5),
        validation=ValidationConfig(every_steps=0, max_images=2, max_side_px=32),
        **kw,
    )


def _dataset() -> SyntheticHazeDataset:
    return SyntheticHazeDataset(_images(), AugmentConfig(crop_px=16), HazeConfig(), seed=3)


def test_lr_schedule_warmup_then_cosine() -> None:
    config = TrainConfig(steps=100, optim=OptimConfig(warmup_steps=10, min_lr_ratio=0.01))
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(10, config) == pytest.approx(1.0)
    assert lr_factor(55, config) == pytest.approx(0.505)
    assert lr_factor(100, config) == pytest.approx(0.01)


@pytest.mark.slow
def test_a_few_steps_reduce_the_loss(tmp_path: Path) -> None:
    ds = _dataset()
    val = [(ds[i]["hazy"], ds[i]["clear"]) for i in range(1000, 1002)]
    result = train_network(_config(tmp_path, 30, every=30), ds, val_pairs=val, guidance_fn=_density, progress=False)
    losses = [r["loss"] for r in result.history]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert "val_psnr" in result.history[-1] and result.history[-1]["val_psnr"] > 0
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(lines) == 30 and json.loads(lines[-1])["step"] == 30


def test_field_supervision_adds_the_scattering_term(tmp_path: Path) -> None:
    plain = train_network(_config(tmp_path / "a", 1), _dataset(), guidance_fn=_density, progress=False)
    fields = train_network(_config(tmp_path / "b", 1, field_loss_weight=1.0), _dataset(), guidance_fn=_density,
                           progress=False)  # fmt: skip
    # same init, same batch: the only difference is the (positive) field term on the first step
    assert fields.history[0]["loss"] > plain.history[0]["loss"] > 0


def test_airlight_head_has_its_own_lr_and_learns(tmp_path: Path) -> None:
    from cliphaze.config import get_config
    from cliphaze.factory import create_model

    plain = build_objects(create_model("cliphaze-tiny"), _config(tmp_path, 1), torch.device("cpu"))
    assert [g["weight_decay"] for g in plain.optimizer.param_groups] == [0.01, 0.0]  # resume states keep 2 groups
    config = _config(tmp_path, 2, field_loss_weight=1.0)
    config = dataclasses.replace(config, optim=dataclasses.replace(config.optim, airlight_lr_mult=10.0))
    torch.manual_seed(0)
    net = create_model(get_config("cliphaze-tiny").replace(global_airlight=True))
    groups = build_objects(net, config, torch.device("cpu")).optimizer.param_groups
    head = {id(p) for p in net.airlight.parameters()}
    head_lrs = {g["lr"] for g in groups if all(id(p) in head for p in g["params"])}
    body_lrs = {g["lr"] for g in groups if not any(id(p) in head for p in g["params"])}
    assert len(groups) == 4 and head_lrs == {config.optim.lr * 10.0} and body_lrs == {config.optim.lr}
    result = train_network(config, _dataset(), guidance_fn=_density, model=net, progress=False)
    assert result.raw_model.airlight.colour.weight.abs().max() > 0.01  # from zero, at the head's lr


@pytest.mark.slow
def test_resume_is_bit_identical(tmp_path: Path) -> None:
    straight = train_network(_config(tmp_path / "a", 4), _dataset(), guidance_fn=_density, progress=False)
    first = train_network(_config(tmp_path / "b", 4), _dataset(), guidance_fn=_density, stop_after=2,
                          progress=False)
    assert first.step == 2
    state = latest_state(tmp_path / "b")
    assert state is not None and state.name == "state-00000002.json"
    torch.manual_seed(1234)  # disturb the global RNG: resume must restore it
    resumed = train_network(_config(tmp_path / "b", 4), _dataset(), guidance_fn=_density, resume=True,
                            progress=False)
    assert resumed.step == 4
    for name, a in straight.raw_model.state_dict().items():
        assert torch.equal(a, resumed.raw_model.state_dict()[name]), name
    for name, a in straight.model.state_dict().items():
        assert torch.equal(a, resumed.model.state_dict()[name]), name
    assert [r["loss"] for r in straight.history[2:]] == [r["loss"] for r in resumed.history]
    _, data = read_state(tmp_path / "b")
    assert data["step"] == 4 and data["extra"]["config"]["variant"] == "cliphaze-tiny"


def test_resume_state_is_not_a_pickle_and_bad_states_are_refused(tmp_path: Path) -> None:
    train_network(_config(tmp_path, 2), _dataset(), progress=False)
    tensors_file = tmp_path / "state-00000002.safetensors"
    assert not tensors_file.read_bytes().startswith(b"PK")  # not a torch.save zip
    with pytest.raises(ResumeError, match="no complete resume state"):
        read_state(tmp_path / "empty_dir_that_exists" if (tmp_path / "empty_dir_that_exists").mkdir() is None else tmp_path)
    tensors_file.write_bytes(b"garbage")
    with pytest.raises(ResumeError):
        read_state(tmp_path / "state-00000002.json")
