"""A bundle whose network is stored in bf16 (a GPU run's output must fit 16 MiB) loads into the float32 network."""

from __future__ import annotations

from pathlib import Path

import torch

from cliphaze.bundle import load_bundle, save_bundle
from cliphaze.checkpoint import read_safetensors

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "cliphaze" / "weights" / "cliphaze-t.safetensors"


def test_bf16_network_halves_the_file_and_loads_rounded_weights(tmp_path: Path) -> None:
    shipped = load_bundle(SHIPPED)
    path = tmp_path / "bf16.safetensors"
    save_bundle(path, shipped.net, shipped.encoder, embed_towers=True, net_dtype=torch.bfloat16)
    tensors, metadata = read_safetensors(path)
    assert metadata["net_dtype"] == "bfloat16"
    assert all(v.dtype == torch.bfloat16 for k, v in tensors.items() if k.startswith("net.") and v.is_floating_point())
    assert all(v.dtype == torch.float32 for k, v in tensors.items() if k.startswith("clip."))  # identity hash
    assert path.stat().st_size < 16 * 2**20 < SHIPPED.stat().st_size + 16 * 2**20
    assert path.stat().st_size < 0.75 * SHIPPED.stat().st_size
    loaded = load_bundle(path)
    for name, value in shipped.net.state_dict().items():
        got = loaded.net.state_dict()[name]
        assert got.dtype == value.dtype, name
        if value.is_floating_point():
            assert torch.equal(got, value.to(torch.bfloat16).float()), name
