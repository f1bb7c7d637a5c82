"""scripts/gpu_check.sh: syntax, the table formatter, and a real dry (CPU, tiny sizes) run producing the table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.bench.realtime import markdown_table

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


def test_markdown_table_has_one_row_per_cell_and_marks_skips() -> None:
    config = {"precision": "bf16", "compile_mode": "reduce-overhead", "batch": 4, "streams": 2}
    rows = [
        {"variant": "cliphaze-t", "resolution": "1080p", "scale": 0.5, "model_fps": 61.234, "guidance_share": 0.031,
         "e2e_fps": 58.9, "latency_ms_p50": 40.2, "latency_ms_p95": 55.0},
        {"variant": "cliphaze-t", "resolution": "4k", "scale": 1.0, "skipped": "estimated 3.0 s/frame > 2 s"},
        {"variant": "dcp", "resolution": "4k", "scale": 1.0, "model_fps": 9.0, "guidance_share": 0.0},
    ]
    table = markdown_table([{"device_name": "NVIDIA H100 80GB HBM3", "config": config, "rows": rows}]).splitlines()
    assert len(table) == 2 + len(rows)
    assert "| NVIDIA H100 80GB HBM3 | cliphaze-t | 1080p | 0.5 | bf16 | reduce-overhead | 4 | 2 | 61.23 | 58.90 | 40 | 55 | 3.1 |" in table
    assert "skipped: estimated 3.0 s/frame > 2 s" in table[3]
    assert "| 9.00 | - | - | - | 0.0 |" in table[4]  # model-only row: no end-to-end columns


@pytest.mark.slow
def test_dry_run_on_the_cpu_writes_the_table(tmp_path: Path) -> None:
    """No CUDA here: the script must fall back to its CPU mode by itself and still write the table."""
    doc, out = tmp_path / "benchmarks-gpu.md", tmp_path / "out"
    env = {**os.environ, "CLIPHAZE_GPU_CHECK_DOC": str(doc), "OUT": str(out), "PYTHON": sys.executable,
           "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    env.pop("CLIPHAZE_GPU_CHECK_DRY", None)
    result = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "running the CPU dry mode" in result.stdout
    text = doc.read_text()
    assert "DRY/CPU MODE" in text and "Device: **cpu**" in text
    assert "- fp32: ok" in text and "- bf16: ok" in text and "- pytest-gpu: skipped (dry/CPU mode)" in text
    assert "| cpu | dcp | 720p | 1 | fp32 | off | 1 | 1 |" in text
    assert "| cpu | cliphaze-tiny | 720p | 0.25 | bf16 | off | 1 | 1 |" in text
    assert "decode 320x180 hwdec=none (cpu)" in text and "decode 320x180 hwdec=cuda (cpu)" in text
    assert "- decode: ok" in text
    assert (out / "benchmarks-gpu.md").read_text() == text and (out / "steps.tsv").exists()
