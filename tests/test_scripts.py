"""The measuring scripts still run against today's code: the CPU profile and the default model's training recipe."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
def test_train_default_continues_the_shipped_model(tmp_path: Path) -> None:
    """The model card's GPU command, on the CPU through --device auto --amp auto, for two steps: the shipped
    bundle's towers (taken out of the bundle) and network (with its airlight head) are the starting point."""
    from cliphaze.bundle import load_bundle
    from cliphaze.train.clip_stage import load_towers

    shipped = ROOT / "cliphaze" / "weights" / "cliphaze-t.safetensors"
    weights, run = tmp_path / "weights.safetensors", tmp_path / "run"
    _run(["scripts/train_default.py", "--out", str(run), "--weights", str(weights), "--towers", str(shipped),
          "--init-from", str(shipped), "--global-airlight", "--steps", "2", "--crop", "32", "--batch", "2",
          "--device", "auto", "--amp", "auto", "--workers", "0", "--threads", "1", "--skip-eval"], ROOT)  # fmt: skip
    before, after = load_bundle(shipped), load_bundle(weights)
    assert after.net.config == before.net.config and after.net.airlight is not None
    towers = load_towers(str(run / "towers.safetensors")).encoder
    for name, value in before.encoder.clip.model.state_dict().items():
        assert torch.equal(towers.clip.model.state_dict()[name], value), name
    moved = [n for n, p in after.net.state_dict().items() if not torch.equal(p, before.net.state_dict()[n])]
    assert moved  # it trained
    assert (run / "val" / "nonhomogeneous" / "hazy").is_dir()


def test_ci_runs_the_readme_quick_start_as_written() -> None:
    """.ci/run reads the quick start from README.md; this fails if it would find nothing, or not the newcomer's
    two steps (a fresh venv, a non-editable install and the demo; then the test script) in that order."""
    result = subprocess.run([str(ROOT / ".ci" / "run"), "--print-quick-start"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)  # fmt: skip
    first, second = result.stdout.strip().splitlines()
    assert first.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install . &&")
    assert first.endswith("cliphaze demo")
    assert second == "scripts/test.sh"
