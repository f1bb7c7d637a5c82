"""Building CLIP by registered / shipped / embedded config and loading local checkpoints like real ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from cliphaze.clip import ClipLoadError, ClipSpec, create_clip
from cliphaze.clip.towers import is_builtin_config, resolve_model_config
from conftest import TINY_CONFIG, make_clip_state


def test_local_safetensors_checkpoint_loads_exactly(tiny_model_name: str, tiny_clip_file: Path) -> None:
    loaded = create_clip(ClipSpec(tiny_model_name, str(tiny_clip_file)))
    expected = make_clip_state(tiny_model_name, seed=1)
    state = loaded.model.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert loaded.identity.pretrained == "file:tiny_clip.safetensors"
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())


def test_pt_checkpoint_with_wrapper_and_prefix(tiny_model_name: str, tmp_path: Path) -> None:
    state = make_clip_state(tiny_model_name, seed=3)
    path = tmp_path / "clip.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    loaded = create_clip(ClipSpec(tiny_model_name, str(path)))
    assert torch.equal(loaded.model.visual.proj, state["visual.proj"])


def test_identity_tracks_weights_not_names(tiny_model_name: str, tiny_clip_file: Path, tmp_path: Path) -> None:
    a = create_clip(ClipSpec(tiny_model_name, str(tiny_clip_file))).identity
    other = tmp_path / "other.pt"
    torch.save(make_clip_state(tiny_model_name, seed=9), other)
    b = create_clip(ClipSpec(tiny_model_name, str(other))).identity
    assert a.config_hash == b.config_hash
    assert not a.matches(b)
    renamed = tmp_path / "renamed.safetensors"
    renamed.write_bytes(tiny_clip_file.read_bytes())
    assert create_clip(ClipSpec(tiny_model_name, str(renamed))).identity.matches(a)


def test_misshaped_checkpoint_is_one_clear_error(tiny_model_name: str, tmp_path: Path) -> None:
    state = make_clip_state(tiny_model_name, seed=1)
    state["visual.proj"] = torch.zeros(3, 3)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ClipLoadError, match="do not fit") as info:
        create_clip(ClipSpec(tiny_model_name, str(path)))
    assert "\n" not in str(info.value)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_pickled_code_in_clip_checkpoint_is_refused(tiny_model_name: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": _Exploit(marker)}}, path)
    with pytest.raises(ClipLoadError, match="refused"):
        create_clip(ClipSpec(tiny_model_name, str(path)))
    assert not marker.exists()


def test_unknown_model_and_unknown_pretrained(tiny_model_name: str, tmp_path: Path) -> None:
    with pytest.raises(ClipLoadError, match="unknown open_clip model"):
        create_clip(ClipSpec("no-such-model-xyz"))
    with pytest.raises(ClipLoadError, match="neither a local file nor a pretrained tag"):
        create_clip(ClipSpec(tiny_model_name, str(tmp_path / "missing.pt")))


def test_shipped_and_embedded_configs_need_no_registration() -> None:
    shipped = create_clip(ClipSpec("cliphaze-clip-tiny"))
    assert shipped.model.visual.proj.shape == (64, 32)
    assert not is_builtin_config(ClipSpec("cliphaze-clip-tiny"))
    assert is_builtin_config(ClipSpec("ViT-B-32"))
    embedded = ClipSpec("never-registered-name", model_config_json=json.dumps(TINY_CONFIG))
    assert resolve_model_config(embedded) == TINY_CONFIG
    assert create_clip(embedded).model.visual.proj.shape == (32, 24)
    assert resolve_model_config(ClipSpec("daclip_ViT-B-32"))["vision_cfg"]["width"] == 768
