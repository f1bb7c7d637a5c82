#!/usr/bin/env bash
# One prepared GPU run for issue 7 (an H100 session has 15 device minutes in all: this stays under ~8).
#
#   scripts/gpu_check.sh            # on the GPU machine, from the repository root (or anywhere: it cd's there)
#   CLIPHAZE_GPU_CHECK_DRY=1 scripts/gpu_check.sh   # CPU mode: tiny sizes, no pytest (tests/test_gpu_check.py)
#
# Steps, most important first, each under `timeout` and a global deadline (a step that does not fit is
# recorded as skipped, never estimated):
#   0. wheels carried in .whl/ (av, open_clip_torch, ftfy, wcwidth, kornia, kornia_rs, scikit-video...) are
#      installed into /tmp/site when present; the repository itself goes on PYTHONPATH (no pip install).
#   1. pytest -m gpu with CLIPHAZE_REQUIRE_GPU=1 (a GPU test that would skip fails instead).
#   2. cliphaze bench realtime, fp32, compile off: dcp, cliphaze-t, cliphaze-s at 1080p and 4K, scale 1/0.5/0.25.
#   3. bf16 autocast; 4. torch.compile default and CUDA graphs (reduce-overhead); 5. batch 4; 6. 2 and 4 streams
#      sharing one GPU (copy/compute overlap is the engine's CUDA path in every end-to-end number);
#   7. decode fps, CPU against NVDEC (scripts/bench_decode.py, --hwdec none/cuda) at 1080p and 4K.
#   After 1: cliphaze bench scan --device cuda (the scan backends at the 960x540 stage, bf16; scan.log).
# Output: a markdown table with the device name in docs/benchmarks-gpu.md, and in $OUT when set, with the logs.
# Environment: CLIPHAZE_GPU_CHECK_BUDGET_S (default 450), CLIPHAZE_GPU_CHECK_DOC (default docs/benchmarks-gpu.md).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY="${CLIPHAZE_GPU_CHECK_DRY:-0}"
BUDGET_S="${CLIPHAZE_GPU_CHECK_BUDGET_S:-450}"
DOC="${CLIPHAZE_GPU_CHECK_DOC:-docs/benchmarks-gpu.md}"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d /tmp/cliphaze-gpu-check.XXXXXX)"
STEPS_FILE="$WORK/steps.tsv"
: >"$STEPS_FILE"
export PYTHONUNBUFFERED=1

if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
  echo "gpu_check: installing carried wheels from .whl/ into /tmp/site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "gpu_check: wheel install failed; continuing with what is installed"
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

HAS_CUDA="$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)"
if [ "$DRY" != "1" ] && [ "$HAS_CUDA" != "1" ]; then
  echo "gpu_check: no CUDA device here: running the CPU dry mode instead (tiny sizes)"
  DRY=1
fi
if [ "$DRY" = "1" ]; then
  DEVICE=cpu
else
  DEVICE=cuda
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$WORK/nvidia-smi.txt"
fi
DEADLINE=$((SECONDS + BUDGET_S))

# step NAME MAX_S CMD...: run under timeout (at most the time left), log to $WORK/NAME.log, record the outcome.
step() {
  local name="$1" max_s="$2"
  shift 2
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 20 ]; then
    echo "gpu_check: $name skipped (out of time budget)"
    printf '%s\tskipped (out of time budget)\n' "$name" >>"$STEPS_FILE"
    return 0
  fi
  local limit=$((max_s < left ? max_s : left))
  echo "gpu_check: $name (limit ${limit}s)"
  local started=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$WORK/$name.log"
  local outcome="ok"
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && outcome="timed out after ${limit}s"
  [ "$rc" -ne 0 ] && [ "$outcome" = "ok" ] && outcome="failed (exit $rc)"
  printf '%s\t%s in %ss\n' "$name" "$outcome" "$((SECONDS - started))" >>"$STEPS_FILE"
}

bench() {  # bench NAME MAX_S [cliphaze bench realtime options...]
  local name="$1" max_s="$2"
  shift 2
  step "$name" "$max_s" "$PY" cli.py bench realtime --device "$DEVICE" --json "$WORK/bench-$name.json" "$@"
}

if [ "$DRY" = "1" ]; then
  printf 'pytest-gpu\tskipped (dry/CPU mode)\n' >>"$STEPS_FILE"
  bench fp32 240 --variants dcp,cliphaze-tiny --resolutions 720p --scales 0.25 --frames 1 --max-frame-s 60
  bench bf16 120 --variants cliphaze-tiny --resolutions 720p --scales 0.25 --frames 1 --precision bf16 --no-e2e \
    --max-frame-s 60
  step decode 60 "$PY" scripts/bench_decode.py --sizes 320x180 --frames 10 --hwdec none,cuda
else
  bench fp32 150 --variants dcp,cliphaze-t,cliphaze-s --resolutions 1080p,4k --scales 1,0.5,0.25 --frames 20 \
    --max-frame-s 2
  CLIPHAZE_REQUIRE_GPU=1 step pytest-gpu 120 "$PY" -m pytest -m gpu -q -x -p no:cacheprovider tests
  step scan 90 "$PY" cli.py bench scan --device cuda  # triton vs chunked at the 960x540 stage (issue 15), scan.log
  bench bf16 60 --variants cliphaze-t,cliphaze-s --resolutions 1080p,4k --scales 1,0.5 --frames 20 --precision bf16 \
    --max-frame-s 2
  bench compile 120 --variants cliphaze-t --resolutions 1080p,4k --scales 0.5 --frames 20 --compile default --no-e2e
  bench cudagraphs 90 --variants cliphaze-t --resolutions 1080p --scales 0.5 --frames 20 --compile reduce-overhead \
    --no-e2e
  bench batch4 45 --variants cliphaze-t --resolutions 1080p --scales 0.5 --frames 20 --batch 4
  bench streams2 45 --variants cliphaze-t --resolutions 1080p --scales 0.5 --frames 20 --streams 2
  bench streams4 45 --variants cliphaze-t --resolutions 1080p --scales 0.5 --frames 20 --streams 4
  step decode 60 "$PY" scripts/bench_decode.py --sizes 1920x1080,3840x2160 --frames 100 --hwdec none,cuda
fi

"$PY" - "$WORK" "$DOC" "$DRY" <<'EOF'
import json
import sys
import time
from pathlib import Path

from pipelines.bench.realtime import markdown_table

work, doc, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
results = [json.loads(p.read_text()) for p in sorted(work.glob("bench-*.json"))]
device = results[0]["device_name"] if results else "unknown (no benchmark finished)"
smi = work / "nvidia-smi.txt"
lines = [
    "# GPU benchmarks (scripts/gpu_check.sh)",
    "",
    f"Device: **{device}**{' (' + smi.read_text().strip() + ')' if smi.exists() else ''}; "
    f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."
    + (" DRY/CPU MODE (tiny sizes): these rows only prove the script works, they are not GPU numbers." if dry else ""),
    "CLIPHaze variants run with random weights (speed only). Cells over the script's per-frame limit are skipped.",
    "",
    "## Steps",
    "",
    *[f"- {line.replace(chr(9), ': ', 1)}" for line in (work / "steps.tsv").read_text().splitlines()],
    "",
    "## Results",
    "",
    markdown_table(results) if results else "No benchmark produced results.",
    "",
]
decode = work / "decode.log"
if decode.exists():
    rows = [line for line in decode.read_text().splitlines() if line.startswith(("NVDEC:", "decode "))]
    lines += ["## Decoding (scripts/bench_decode.py: decode + RGB conversion, CPU against NVDEC)", "",
              *[f"- {row}" for row in rows], ""]
doc.parent.mkdir(parents=True, exist_ok=True)
doc.write_text("\n".join(lines))
print(f"gpu_check: wrote {doc}")
EOF

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$DOC" "$OUT/" && cp "$WORK"/*.log "$WORK"/*.json "$WORK/steps.tsv" "$OUT/" 2>/dev/null
fi
echo "gpu_check: done in ${SECONDS}s"
