"""scripts/gpu_check.sh: syntax, the packing budget, the summary's verdicts, and a real dry (CPU, tiny sizes) run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipelines.bench.realtime import markdown_table

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
PACK = ROOT / "scripts" / "pack_gpu.sh"
MAX_RESULT_FILES = 8  # the GPU machine returns at most 8 files from $OUT
CARRY_LIMIT_MIB = 64.0  # what one device call may send: the working tree plus the carried folders


def test_scripts_parse() -> None:
    for script in (SCRIPT, PACK):
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)


def test_packing_recipe_fits_the_64_mib_the_gpu_machine_accepts() -> None:
    """The working tree plus the packages' tarball, and the project archive plus the tarball, each <= 64 MiB
    (``pack_gpu.sh --check`` measures the tree and the archive here; the tarball as built, else as measured)."""
    out = subprocess.run(["bash", str(PACK), "--check"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    sums = [float(line.split(": ")[1].split(" MiB")[0]) for line in out.stdout.splitlines() if " of 64.0 MiB" in line]
    assert len(sums) == 2 and all(0 < s <= CARRY_LIMIT_MIB for s in sums), out.stdout


def _fake_logs(folder: Path) -> Path:
    logs = folder / "logs"
    logs.mkdir()
    (logs / "steps.tsv").write_text("pytest-gpu\tok in 95s\nscan\tok in 20s\nrt-t-1080p\tok in 60s\n"
                                    "train-step\ttimed out after 90s in 90s\n")  # fmt: skip
    (logs / "pytest-gpu.log").write_text("....\n===== 14 passed, 4 skipped in 95.20s =====\n")
    (logs / "scan.log").write_text('selective scan: b=1\nSCAN {"backend": "auto->triton", "L": 129600, '
                                   '"forward_ms": 0.8, "forward_backward_ms": 3.0}\n')  # fmt: skip
    rows = [{"variant": "cliphaze-t", "resolution": "1080p", "scale": 0.5, "model_fps": 72.0, "guidance_share": 0.01,
             "restore_path": "cuda graphs", "e2e_fps": 61.0, "latency_ms_p50": 40.0, "latency_ms_p95": 50.0},
            {"variant": "cliphaze-t", "resolution": "1080p", "scale": 1.0, "model_fps": 12.5, "guidance_share": 0.0,
             "restore_path": "cuda graphs"}]  # fmt: skip
    config = {"precision": "bf16", "compile_mode": "off", "cuda_graphs": True, "batch": 1, "streams": 1}
    (logs / "bench-rt-t-1080p.json").write_text(json.dumps({"device_name": "NVIDIA H200", "config": config,
                                                            "rows": rows}))  # fmt: skip
    return logs


def test_summary_says_met_not_met_and_not_measured(tmp_path: Path) -> None:
    logs, results = _fake_logs(tmp_path), tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLIPHAZE_GPU_CHECK_COMMIT": "abc1234"}
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check_summary.py"), str(logs), str(results), "0"],
                   check=True, env=env, capture_output=True, timeout=120)  # fmt: skip
    text = (results / "summary.md").read_text()
    assert "passes in <= 2 min | 14 passed, 4 skipped in 95.20s | **met** |" in text
    assert "| scan forward, L=129,600, <= 1 ms | 0.800 ms (auto->triton) | **met** |" in text
    assert ("| cliphaze-t 1080p --scale 0.5, bf16, >= 60 fps | 72.0 fps model-only (cuda graphs), end to end 61.0 fps"
            " | **met** |") in text  # fmt: skip
    assert "| cliphaze-t 1080p full resolution, bf16, >= 15 fps | 12.5 fps model-only (cuda graphs) | **NOT met** |" \
        in text
    assert "| cliphaze-t 4K --scale 0.25, bf16, >= 30 fps | not measured (rt-t-1080p: ok in 60s) | - |" in text
    assert "not measured (train-step: timed out after 90s in 90s)" in text
    row = "| NVIDIA H200 | cliphaze-t | 1080p | 0.5 | bf16 | off + graphs | 1 | 1 | 72.00 | 61.00 | 40 | 50 | 1.0 |"
    assert row in text
    section = (results / "benchmarks-gpu-section.md").read_text()
    assert section.startswith("## NVIDIA H200, commit abc1234 (") and "### Targets (issue 15)" in section


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
def test_dry_run_on_the_cpu_writes_at_most_8_result_files(tmp_path: Path) -> None:
    """No CUDA here: the script falls back to its CPU mode by itself, runs every dry step, and leaves a summary,
    the docs section and one tarball of logs: within the 8 files the GPU machine returns."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "",
           "CLIPHAZE_GPU_CARRY": str(tmp_path / "no-carry")}  # fmt: skip
    env.pop("CLIPHAZE_GPU_CHECK_DRY", None)
    result = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "running the CPU dry mode" in result.stdout
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["benchmarks-gpu-section.md", "logs.tar.xz", "summary.md"]
    assert len(files) <= MAX_RESULT_FILES
    text = (out / "summary.md").read_text()
    assert "DRY/CPU MODE" in text and "Device: **cpu**" in text
    for step in ("scan: ok", "rt-dry: ok", "train-step: ok", "decode: ok", "pytest-gpu: skipped (dry/CPU mode)"):
        assert f"- {step}" in text, step
    assert "| cpu | dcp | 720p | 1 | bf16 | off | 1 | 1 |" in text
    assert "| cpu | cliphaze-tiny | 720p | 0.25 | bf16 | off | 1 | 1 |" in text
    assert "decode 320x180 hwdec=none (cpu)" in text and "decode 320x180 hwdec=cuda (cpu)" in text
    assert "train step cliphaze-tiny crop 32 batch 2 bf16 on cpu" in text
    with tarfile.open(out / "logs.tar.xz") as tar:
        names = tar.getnames()
    assert "logs/steps.tsv" in names and "logs/rt-dry.log" in names and "logs/bench-rt-dry.json" in names
