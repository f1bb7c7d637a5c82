"""scripts/gpu_train.sh without a GPU: the dry run goes through the GPU recipe's whole path at tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cliphaze.train.content import PackImage, write_content_pack

ROOT = Path(__file__).resolve().parents[1]
MAX_FILES = 8
MAX_FILE_BYTES = 16 * 2**20


@pytest.mark.slow
def test_gpu_train_dry_run_leaves_at_most_8_small_files_and_a_loadable_bf16_bundle(tmp_path: Path) -> None:
    from cliphaze.bundle import load_bundle
    from cliphaze.checkpoint import read_safetensors

    carry, out = tmp_path / "carry", tmp_path / "out"
    carry.mkdir()
    rng = np.random.default_rng(0)
    write_content_pack(carry / "content.tar", [
        PackImage(name, split, rng.integers(0, 256, (64, 80, 3), dtype=np.uint8), {"licence": "CC0-1.0"})
        for name, split in (("a", "train"), ("b", "train"), ("held", "val"))], {"test": "1"})
    env = {**os.environ, "DRY": "1", "CARRY": str(carry), "OUT": str(out), "RUN_DIR": str(tmp_path / "run"),
           "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(["bash", "scripts/gpu_train.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= MAX_FILES and all(p.stat().st_size <= MAX_FILE_BYTES for p in files)
    assert "dry run" in result.stdout and "steps/s" in result.stdout and "peak memory" in result.stdout
    for kind in ("homogeneous", "nonhomogeneous"):
        for method in ("hazy", "dcp", "cliphaze-t"):
            assert any(line.split()[:2] == [kind, method] for line in result.stdout.splitlines()), (kind, method)
    tensors, metadata = read_safetensors(out / "cliphaze-t.safetensors")
    assert metadata["net_dtype"] == "bfloat16"
    net = load_bundle(out / "cliphaze-t.safetensors").net
    assert net.airlight is not None
    shipped = load_bundle(ROOT / "cliphaze" / "weights" / "cliphaze-t.safetensors").net.state_dict()
    assert any(not torch.equal(v, shipped[k].to(torch.bfloat16).float()) for k, v in net.state_dict().items())
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["stage2"]["steps"] >= 1 and summary["calibration"]["steps"] >= 2
    assert summary["stage1"]["continued_from"] == "cliphaze-t.safetensors"
    content = json.loads((tmp_path / "run" / "content.json").read_text())
    assert "pack:a" in content["train"] and "pack_held" in content["val"] and "pack:held" not in content["train"]
