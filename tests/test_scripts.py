"""The measuring scripts still run against today's code: the CPU profile and the default model's training recipe."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path) -> str:
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _range_ms(output: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}\s+([0-9.]+)\s", output, flags=re.MULTILINE)
    assert match, f"no {name!r} range in:\n{output}"
    return float(match.group(1))


@pytest.mark.slow
def test_profile_cpu_times_every_layer_type() -> None:
    """The SS2D ranges wrap functions by name in cliphaze.ops: a rename there must fail here, not go unnoticed."""
    out = _run(["scripts/profile_cpu.py", "--variant", "cliphaze-tiny", "--sizes", "48x40", "--threads", "1"], ROOT)
    total = _range_ms(out, "restore (total)")
    for name in ("window attention", "SS2D (all)", "  SS2D: selective-scan kernel", "  SS2D: cross-scan + merge",
                 "CAM (DAM+SAM+blend)", "FFN (MLP)"):  # fmt: skip
        assert 0.0 < _range_ms(out, name) < total, name
    assert "top operators (self CPU)" in out


@pytest.mark.slow
def test_train_default_runs_its_recipe_end_to_end(tmp_path: Path) -> None:
    """A few steps of every phase on the CPU through --device auto (the GPU path's plumbing), bundle written."""
    weights = tmp_path / "weights.safetensors"
    _run(["scripts/train_default.py", "--out", str(tmp_path / "run"), "--weights", str(weights),
          "--clip-steps", "2", "--steps", "2", "--crop", "32", "--batch", "2", "--device", "auto", "--amp", "auto",
          "--threads", "1", "--skip-eval"], ROOT)  # fmt: skip
    from cliphaze.bundle import load_bundle

    bundle = load_bundle(weights)
    assert bundle.net.config.name == "cliphaze-t"
    assert (tmp_path / "run" / "towers.safetensors").is_file()
    assert (tmp_path / "run" / "val" / "nonhomogeneous" / "hazy").is_dir()
