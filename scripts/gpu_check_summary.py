"""Summary of a scripts/gpu_check.sh run: targets met or not, tables, a section for docs/benchmarks-gpu.md.

    python scripts/gpu_check_summary.py LOGS_DIR RESULTS_DIR DRY(0|1)

Reads the step outcomes (steps.tsv), the ``bench realtime`` JSONs, the scan, training-step, decode and pytest
logs in LOGS_DIR; writes RESULTS_DIR/summary.md and RESULTS_DIR/benchmarks-gpu-section.md. A target whose
step did not produce a number is "not measured", with the step's outcome: never an estimate.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.bench.realtime import markdown_table

# (label, variant, resolution, scale, minimum fps) of issue 15, bf16, model-only fps on one H100/H200.
FPS_TARGETS = [
    ("cliphaze-t 1080p --scale 0.5", "cliphaze-t", "1080p", 0.5, 60.0),
    ("cliphaze-t 4K --scale 0.25", "cliphaze-t", "4k", 0.25, 30.0),
    ("cliphaze-t 1080p full resolution", "cliphaze-t", "1080p", 1.0, 15.0),
    ("cliphaze-s 1080p --scale 0.5", "cliphaze-s", "1080p", 0.5, 30.0),
]
SCAN_TARGET_MS = 1.0  # forward at b=1, 4x96 channels, N=16, L=129,600
SCAN_TARGET_L = 129_600
TRAIN_TARGET_MS = 150.0
TRAIN_TARGET_GIB = 24.0
PYTEST_TARGET_S = 120.0


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _steps(logs: Path) -> dict[str, str]:
    out = {}
    for line in _read(logs / "steps.tsv").splitlines():
        name, _, outcome = line.partition("\t")
        out[name] = outcome
    return out


def _why(steps: dict[str, str], *names: str) -> str:
    said = [f"{n}: {steps[n]}" for n in names if n in steps]
    return "not measured (" + ("; ".join(said) if said else "step did not run") + ")"


def _met(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def _realtime(logs: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(logs.glob("bench-*.json"))]


def _fps_row(results: list[dict[str, Any]], variant: str, resolution: str, scale: float) -> dict[str, Any] | None:
    for result in results:
        if not result["config"].get("cuda_graphs", True) or result["config"]["precision"] != "bf16":
            continue
        for row in result["rows"]:
            if (row["variant"], row["resolution"], float(row["scale"])) == (variant, resolution, scale):
                return row
    return None


def targets(logs: Path, steps: dict[str, str]) -> list[str]:
    """Markdown table: each issue-15 target, the measurement, met or not."""
    lines = ["| target | measured | verdict |", "|---|---|---|"]
    pytest_log = _read(logs / "pytest-gpu.log").strip().splitlines()
    last = pytest_log[-1] if pytest_log else ""
    match = re.search(r"in ([\d.]+)s", last)
    if match and "pytest-gpu" in steps:
        ok = steps["pytest-gpu"].startswith("ok") and float(match.group(1)) <= PYTEST_TARGET_S
        lines.append(f"| `pytest -m \"gpu and not slow\"` passes in <= 2 min | {last.strip('= ')} | {_met(ok)} |")
    else:
        lines.append(f"| `pytest -m \"gpu and not slow\"` passes in <= 2 min | {_why(steps, 'pytest-gpu')} | - |")
    scans = [json.loads(line[5:]) for line in _read(logs / "scan.log").splitlines() if line.startswith("SCAN ")]
    auto = next((s for s in scans if s["backend"].startswith("auto")), None)
    if auto is not None and auto["L"] == SCAN_TARGET_L:
        lines.append(f"| scan forward, L=129,600, <= {SCAN_TARGET_MS:g} ms | {auto['forward_ms']:.3f} ms "
                     f"({auto['backend']}) | {_met(auto['forward_ms'] <= SCAN_TARGET_MS)} |")  # fmt: skip
    else:
        lines.append(f"| scan forward, L=129,600, <= {SCAN_TARGET_MS:g} ms | {_why(steps, 'scan')} | - |")
    results = _realtime(logs)
    for label, variant, resolution, scale, fps in FPS_TARGETS:
        row = _fps_row(results, variant, resolution, scale)
        if row is None or "skipped" in row:
            why = row["skipped"] if row is not None else _why(steps, "rt-t-1080p", "rt-t-4k", "rt-s-1080p")
            lines.append(f"| {label}, bf16, >= {fps:g} fps | {why} | - |")
            continue
        e2e = f", end to end {row['e2e_fps']:.1f} fps" if "e2e_fps" in row else ""
        lines.append(f"| {label}, bf16, >= {fps:g} fps | {row['model_fps']:.1f} fps model-only "
                     f"({row.get('restore_path', '?')}){e2e} | {_met(row['model_fps'] >= fps)} |")  # fmt: skip
    train = next((json.loads(line) for line in _read(logs / "train-step.log").splitlines() if line.startswith("{")),
                 None)  # fmt: skip
    if train is not None and train["variant"] == "cliphaze-t":
        ok = train["ms_per_step"] <= TRAIN_TARGET_MS and train["peak_gib"] <= TRAIN_TARGET_GIB
        lines.append(f"| training step cliphaze-t crop 256 batch 16 bf16, <= {TRAIN_TARGET_MS:g} ms and <= "
                     f"{TRAIN_TARGET_GIB:g} GiB | {train['ms_per_step']:.1f} ms, {train['peak_gib']:.2f} GiB | "
                     f"{_met(ok)} |")  # fmt: skip
    else:
        tail = _read(logs / "train-step.log").strip().splitlines()[-1:] or [""]
        lines.append(f"| training step cliphaze-t crop 256 batch 16 bf16 | {_why(steps, 'train-step')} "
                     f"{tail[0][:160]} | - |")  # fmt: skip
    return lines


def main() -> None:
    logs, results_dir, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
    steps = _steps(logs)
    results = _realtime(logs)
    device = results[0]["device_name"] if results else "unknown (no benchmark finished)"
    smi = _read(logs / "nvidia-smi.txt").strip()
    versions = _read(logs / "versions.txt").strip().replace("\n", "; ")
    commit = os.environ.get("CLIPHAZE_GPU_CHECK_COMMIT", "unknown")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    head = [
        f"Device: **{device}**{' (' + smi + ')' if smi else ''}; commit {commit}; {when}; {versions}.",
        "CLIPHaze variants in `bench realtime` run with random weights (speed only); fps are model-only unless "
        "marked end to end; cells over the per-frame limit are skipped, not estimated.",
    ]
    if dry:
        head.append("DRY/CPU MODE (tiny sizes): these rows only prove the script works, they are not GPU numbers.")
    body = ["### Targets (issue 15)", "", *targets(logs, steps), "", "### bench realtime", "",
            markdown_table(results) if results else "No benchmark produced results.", ""]  # fmt: skip
    scan = [line for line in _read(logs / "scan.log").splitlines() if line and not line.startswith("SCAN ")]
    if scan:
        body += ["### Selective scan (`pipelines.bench.scan`, every available backend but the reference)", "", "```",
                 *scan, "```", ""]  # fmt: skip
    train = [line for line in _read(logs / "train-step.log").splitlines() if line.startswith("train step")]
    if train:
        body += ["### Training step (`python -m pipelines.bench.train_step`)", "", *[f"- {t}" for t in train], ""]
    decode = [line for line in _read(logs / "decode.log").splitlines() if line.startswith(("NVDEC:", "decode "))]
    if decode:
        body += ["### Decoding (scripts/bench_decode.py: decode + RGB, CPU against NVDEC)", "",
                 *[f"- {row}" for row in decode], ""]  # fmt: skip
    step_lines = [f"- {name}: {outcome}" for name, outcome in steps.items()]
    summary = ["# scripts/gpu_check.sh summary", "", *head, "", "## Steps", "", *step_lines, "", *body]
    section = [f"## {device}, commit {commit} ({when}, scripts/gpu_check.sh)", "", *head, "", *body]
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "summary.md").write_text("\n".join(summary))
    (results_dir / "benchmarks-gpu-section.md").write_text("\n".join(section))
    print("\n".join(summary))


if __name__ == "__main__":
    main()
