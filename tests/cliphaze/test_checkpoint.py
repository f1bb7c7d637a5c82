"""Safetensors checkpoints: round trip, config checks, and refusal of pickles and damaged files."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import torch

from cliphaze.checkpoint import (
    FORMAT_VERSION,
    KIND,
    CheckpointError,
    load_checkpoint,
    read_safetensors,
    save_checkpoint,
    write_safetensors,
)
from cliphaze.config import VARIANTS
from cliphaze.factory import create_model
from cliphaze.model import ClipHazeNet

TINY = VARIANTS["cliphaze-tiny"].replace(
    ssm=dataclasses.replace(VARIANTS["cliphaze-tiny"].ssm, scan_backend="chunked")
)


@pytest.fixture(scope="module")
def trained() -> ClipHazeNet:
    torch.manual_seed(0)
    net = ClipHazeNet(TINY).eval()
    with torch.no_grad():  # move every weight off its initial value, zero-initialised ones included
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net


@pytest.fixture()
def saved(tmp_path: Path, trained: ClipHazeNet) -> Path:
    path = tmp_path / "net.safetensors"
    save_checkpoint(path, trained)
    return path


def _metadata(config_dict: dict, **overrides: str) -> dict[str, str]:
    meta = {"format_version": str(FORMAT_VERSION), "kind": KIND, "config": json.dumps(config_dict)}
    meta.update(overrides)
    return meta


def test_round_trip_gives_identical_outputs(tmp_path: Path, trained: ClipHazeNet) -> None:
    path = tmp_path / "sub" / "net.safetensors"
    save_checkpoint(path, trained, extra_tensors={"text_features": torch.ones(2, 4)}, extra_metadata={"step": "7"})
    assert [p.name for p in path.parent.iterdir()] == ["net.safetensors"]  # no temp file left behind
    loaded = create_model(checkpoint=path).eval()
    assert loaded.config == trained.config
    x = torch.rand(2, 3, 11, 14) * 2 - 1
    density, tokens = torch.rand(1, 1, 7, 7), torch.randn(1, 5, TINY.guidance.semantic_dim)
    with torch.no_grad():
        assert torch.equal(loaded(x, density, tokens), trained(x, density, tokens))
    state, config, meta = load_checkpoint(path, expected_config=TINY)
    assert config == TINY and meta["format_version"] == FORMAT_VERSION and meta["kind"] == KIND
    assert meta["step"] == "7" and meta["config"] == TINY.to_dict()
    assert torch.equal(meta["extra_tensors"]["text_features"], torch.ones(2, 4))
    assert set(state) == set(trained.state_dict())


def test_overwrite_is_atomic_replacement(saved: Path, trained: ClipHazeNet) -> None:
    save_checkpoint(saved, trained, extra_metadata={"step": "8"})
    assert load_checkpoint(saved)[2]["step"] == "8"
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


def test_mismatched_config_is_rejected_naming_fields(saved: Path) -> None:
    other = TINY.replace(stages=tuple(dataclasses.replace(s, dim=s.dim * 2) for s in TINY.stages))
    with pytest.raises(CheckpointError, match=r"does not match.*stages\.0\.dim"):
        load_checkpoint(saved, expected_config=other)
    with pytest.raises(CheckpointError, match="differing fields"):
        create_model("cliphaze-t", checkpoint=saved)


def test_runtime_fields_may_differ(saved: Path) -> None:
    runtime = TINY.replace(
        ssm=dataclasses.replace(TINY.ssm, scan_backend="reference"),
        attention=dataclasses.replace(TINY.attention, impl="math"),
    )
    _, config, _ = load_checkpoint(saved, expected_config=runtime)
    assert config == TINY
    assert create_model(runtime, checkpoint=saved).config.ssm.scan_backend == "reference"


class _Armed:
    """Unpickling this calls open(marker, "w"), i.e. creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickle_checkpoint_is_refused_without_running_it(tmp_path: Path, zip_format: bool) -> None:
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Armed(probe))).close()  # the payload really is armed
    assert probe.exists()
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _Armed(marker)}, path, _use_new_zipfile_serialization=zip_format)
    for load in (load_checkpoint, read_safetensors, lambda p: create_model("cliphaze-tiny", checkpoint=p)):
        with pytest.raises(CheckpointError, match="refusing to unpickle"):
            load(path)
    assert not marker.exists()


def test_truncated_and_corrupt_files_are_rejected(tmp_path: Path, saved: Path) -> None:
    data = saved.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(truncated)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="too short"):
        load_checkpoint(tiny)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"not json at all!" + b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(garbage)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="header length"):
        load_checkpoint(huge)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_unknown_format_and_kind_are_rejected(tmp_path: Path, trained: ClipHazeNet) -> None:
    state = trained.state_dict()
    path = tmp_path / "v99.safetensors"
    write_safetensors(path, state, _metadata(TINY.to_dict(), format_version="99"))
    with pytest.raises(CheckpointError, match="unknown checkpoint format_version '99'"):
        load_checkpoint(path)
    write_safetensors(path, state, _metadata(TINY.to_dict(), kind="clip-bundle"))
    with pytest.raises(CheckpointError, match="kind is 'clip-bundle'"):
        load_checkpoint(path)
    write_safetensors(path, state, _metadata({"stages": "nope"}))
    with pytest.raises(CheckpointError, match="invalid config"):
        load_checkpoint(path)


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path: Path, trained: ClipHazeNet) -> None:
    state = dict(trained.state_dict())
    path = tmp_path / "keys.safetensors"
    meta = _metadata(TINY.to_dict())
    missing = {k: v for k, v in state.items() if k != "head.conv.weight"}
    write_safetensors(path, missing, meta)
    with pytest.raises(CheckpointError, match="missing keys: head.conv.weight"):
        load_checkpoint(path)
    write_safetensors(path, {**state, "stray.weight": torch.zeros(1)}, meta)
    with pytest.raises(CheckpointError, match="unexpected keys: stray.weight"):
        load_checkpoint(path)
    write_safetensors(path, {**state, "head.conv.bias": torch.zeros(5)}, meta)
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: head.conv.bias \(5,\) != \(4,\)"):
        load_checkpoint(path)


def test_reserved_metadata_keys_are_protected(tmp_path: Path, trained: ClipHazeNet) -> None:
    with pytest.raises(CheckpointError, match="reserved"):
        save_checkpoint(tmp_path / "x.safetensors", trained, extra_metadata={"config": "{}"})
