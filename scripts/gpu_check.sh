#!/usr/bin/env bash
# The prepared GPU run of issue 15: one `run` call on an H100/H200 (a session has 15 device minutes in all;
# this script stays under 8, the machine's start and the transfers take the rest).
#
# Recipe, here (a machine with pip and network; about 4 minutes, mostly xz):
#   scripts/pack_gpu.sh              # .gpu/site.tar.xz: the packages the GPU image lacks (av, open_clip_torch,
#                                    #   ftfy, wcwidth, kornia, kornia_rs, pytorch-msssim, scikit-video; and
#                                    #   pytest-timeout, which pyproject's `timeout` option needs) from Python
#                                    #   3.12 manylinux wheels (46 MB), unpacked and re-packed as one tar | xz -9e
#                                    #   (34 MB); then checks that the working tree (20 MB) plus .gpu/ fit 64 MiB
#   scripts/pack_gpu.sh --project    # also .gpu/proj.tar.xz = git archive HEAD | xz -9 (17 MB), for a session
#                                    #   whose working tree is not this project
# Then one device call; the working tree travels with it, .gpu/ is git-ignored and carried (put the commit in
# the command: the tree that travels has no .git):
#   run(command="CLIPHAZE_GPU_CHECK_COMMIT=<git describe --always --dirty> bash scripts/gpu_check.sh",
#       carry=[".gpu"], timeout_s=540)
# or, with the project inside the carry:
#   run(command="mkdir -p /tmp/proj && tar -C /tmp/proj -xJf .gpu/proj.tar.xz && CLIPHAZE_GPU_CARRY=$PWD/.gpu
#        bash /tmp/proj/scripts/gpu_check.sh", carry=[".gpu"], timeout_s=540)
#
# On the GPU machine: .gpu/site.tar.xz is unpacked into /tmp/site (about 5 s), PYTHONPATH=/tmp/site:<project>
# (no pip install), then the steps below, most important first, each under `timeout` and inside a global
# deadline (CLIPHAZE_GPU_CHECK_BUDGET_S, default 450 s). A step that does not fit is recorded as skipped;
# nothing is ever estimated in its place.
#   pytest-gpu        CLIPHAZE_REQUIRE_GPU=1 pytest -m "gpu and not slow" (target: under 2 minutes)
#   scan              the selective-scan forward at b=1, 4x96 channels, N=16, L=129,600, bf16 (target <= 1 ms)
#   scan-cli          cliphaze bench scan --device cuda: the same size, forward+backward, the fused four-direction
#                     call, and chunked (refused or out of memory)
#   rt-t-1080p        bench realtime bf16, cliphaze-t 1080p at --scale 0.5 (>= 60 fps) and 1 (>= 15 fps)
#   train-step        cliphaze-t, crop 256, batch 16, bf16 (<= 150 ms/step, <= 24 GiB)
#   rt-t-4k           cliphaze-t 4K at --scale 0.25 (>= 30 fps)
#   rt-s-1080p        cliphaze-s 1080p at --scale 0.5 (>= 30 fps)
#   rt-dcp            dcp at 1080p and 4K
#   rt-t-eager        cliphaze-t 1080p --scale 0.5 without CUDA graphs (what the graphs gain)
#   decode            scripts/bench_decode.py: CPU against NVDEC at 1080p
#   pytest-gpu-slow   pytest -m "gpu and slow" (torch.compile with inductor CUDA graphs: compiles for minutes)
# Output (the GPU machine returns at most 8 files): $OUT/summary.md (steps, targets met or not, tables),
# $OUT/benchmarks-gpu-section.md (ready to paste into docs/benchmarks-gpu.md) and $OUT/logs.tar.xz (every
# log and JSON). Without $OUT: $CLIPHAZE_GPU_CHECK_OUT (default /tmp/cliphaze-gpu-check-out).
#
# CPU dry mode (no CUDA device, or CLIPHAZE_GPU_CHECK_DRY=1): the same steps at toy sizes, no pytest; it only
# proves the script works (tests/test_gpu_check.py runs it).
set -uo pipefail
cd "$(dirname "$0")/.."
PROJECT="$PWD"

DRY="${CLIPHAZE_GPU_CHECK_DRY:-0}"
BUDGET_S="${CLIPHAZE_GPU_CHECK_BUDGET_S:-450}"
CARRY="${CLIPHAZE_GPU_CARRY:-$PROJECT/.gpu}"
RESULTS="${OUT:-${CLIPHAZE_GPU_CHECK_OUT:-/tmp/cliphaze-gpu-check-out}}"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d /tmp/cliphaze-gpu-check.XXXXXX)"
LOGS="$WORK/logs"
mkdir -p "$LOGS" "$RESULTS"
STEPS_FILE="$LOGS/steps.tsv"
: >"$STEPS_FILE"
export PYTHONUNBUFFERED=1

if [ -f "$CARRY/site.tar.xz" ]; then
  echo "gpu_check: unpacking $CARRY/site.tar.xz into /tmp/site"
  mkdir -p /tmp/site && tar -C /tmp/site -xJf "$CARRY/site.tar.xz" \
    || echo "gpu_check: unpacking the packages failed; continuing with what is installed"
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PROJECT${PYTHONPATH:+:$PYTHONPATH}"

HAS_CUDA="$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)"
if [ "$DRY" != "1" ] && [ "$HAS_CUDA" != "1" ]; then
  echo "gpu_check: no CUDA device here: running the CPU dry mode instead (tiny sizes)"
  DRY=1
fi
if [ "$DRY" = "1" ]; then
  DEVICE=cpu
else
  DEVICE=cuda
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$LOGS/nvidia-smi.txt"
fi
"$PY" -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.version.cuda}")' \
  2>&1 | tee "$LOGS/versions.txt"
"$PY" -c 'import av, kornia, open_clip; print(f"av {av.__version__}, kornia {kornia.__version__}, open_clip {open_clip.__version__}")' \
  2>&1 | tee -a "$LOGS/versions.txt"
SCAN_AUTO="$("$PY" -c "from cliphaze.ops import resolve_backend; print(resolve_backend('auto', '$DEVICE'))" 2>/dev/null || echo unknown)"
echo "scan backend auto on $DEVICE: $SCAN_AUTO" | tee -a "$LOGS/versions.txt"
# The commit measured: given by the caller (the tree that travels has no .git), else git, else the carry's.
if [ -z "${CLIPHAZE_GPU_CHECK_COMMIT:-}" ]; then
  CLIPHAZE_GPU_CHECK_COMMIT="$(git -C "$PROJECT" describe --always --dirty 2>/dev/null \
    || { [ -f "$CARRY/commit.txt" ] && echo "carry packed at $(cat "$CARRY/commit.txt")"; } || echo unknown)"
fi
export CLIPHAZE_GPU_CHECK_COMMIT
DEADLINE=$((SECONDS + BUDGET_S))

# step NAME MAX_S CMD...: run under timeout (at most the time left), log to $LOGS/NAME.log, record the outcome.
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
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  tail -n 15 "$LOGS/$name.log"
  local outcome="ok"
  { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; } && outcome="timed out after ${limit}s"
  [ "$rc" -ne 0 ] && [ "$outcome" = "ok" ] && outcome="failed (exit $rc)"
  printf '%s\t%s in %ss\n' "$name" "$outcome" "$((SECONDS - started))" >>"$STEPS_FILE"
}

realtime() {  # realtime NAME MAX_S [cliphaze bench realtime options...]
  local name="$1" max_s="$2"
  shift 2
  step "$name" "$max_s" "$PY" cli.py bench realtime --device "$DEVICE" --json "$LOGS/bench-$name.json" "$@"
}

# The scan at the issue's size through the benchmark's API (every available backend but the sequential
# reference, plus auto); one JSON line per backend for the summary.
SCAN_PY='
import json, sys
from pipelines.bench.scan import ScanBenchConfig, format_scan_report, run_scan_benchmark
from cliphaze.ops import available_backends
device, height, width, d_inner = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dtype = "bfloat16" if device == "cuda" else "float32"  # the network runs the scan on bf16 inputs under autocast
config = ScanBenchConfig(batch=1, directions=4, d_inner=d_inner, d_state=16, height=height, width=width,
                         repeats=5, device=device, dtype=dtype)
# Not the reference (sequential), nor triton on the CPU (the Triton interpreter, when switched on, times nothing real).
skip = {"reference"} | ({"triton"} if device == "cpu" else set())
names = [n for n, (ok, _) in available_backends(device).items() if ok and n not in skip] + ["auto"]
results = run_scan_benchmark(config, names)
print(format_scan_report(config, results))
for r in results:
    print("SCAN " + json.dumps({"backend": r.backend, "L": height * width, "forward_ms": r.forward_ms,
                                "forward_backward_ms": r.forward_backward_ms}))
'

if [ "$DRY" = "1" ]; then
  printf 'pytest-gpu\tskipped (dry/CPU mode)\n' >>"$STEPS_FILE"
  step scan 120 "$PY" -c "$SCAN_PY" cpu 16 16 8
  realtime rt-dry 240 --variants dcp,cliphaze-tiny --resolutions 720p --scales 0.25 --frames 1 --precision bf16 \
    --max-frame-s 60
  step train-step 120 "$PY" -m pipelines.bench.train_step --variant cliphaze-tiny --crop 32 --batch 2 --amp bf16 \
    --device cpu --steps 1
  step decode 60 "$PY" scripts/bench_decode.py --sizes 320x180 --frames 10 --hwdec none,cuda
else
  FRAMES=30
  if [ "$SCAN_AUTO" = "chunked" ]; then
    FRAMES=3  # the pure-PyTorch scan takes seconds per frame on a GPU: a few frames still give a measurement
  fi
  # Only the files that hold gpu tests: the others may import what the GPU image lacks (hypothesis, ...).
  mapfile -t GPU_TEST_FILES < <(grep -rlE "mark\.gpu|marks=pytest\.mark\.gpu" tests --include="test_*.py" | sort)
  CLIPHAZE_REQUIRE_GPU=1 step pytest-gpu 150 "$PY" -m pytest -m "gpu and not slow" -q -p no:cacheprovider -W "ignore::pytest.PytestConfigWarning" \
    --durations=15 "${GPU_TEST_FILES[@]}"
  step scan 60 "$PY" -c "$SCAN_PY" cuda 270 480 96
  # The same size from the CLI: also the fused four-direction call and chunked (refused or out of memory).
  step scan-cli 90 "$PY" cli.py bench scan --device cuda
  realtime rt-t-1080p 120 --variants cliphaze-t --resolutions 1080p --scales 0.5,1 --frames "$FRAMES" \
    --precision bf16 --max-frame-s 2
  step train-step 90 "$PY" -m pipelines.bench.train_step --variant cliphaze-t --crop 256 --batch 16 --amp bf16 \
    --device cuda --steps 5
  realtime rt-t-4k 60 --variants cliphaze-t --resolutions 4k --scales 0.25 --frames "$FRAMES" --precision bf16 \
    --no-e2e --max-frame-s 2
  realtime rt-s-1080p 60 --variants cliphaze-s --resolutions 1080p --scales 0.5 --frames "$FRAMES" --precision bf16 \
    --no-e2e --max-frame-s 2
  realtime rt-dcp 45 --variants dcp --resolutions 1080p,4k --frames 30 --precision bf16
  realtime rt-t-eager 45 --variants cliphaze-t --resolutions 1080p --scales 0.5 --frames "$FRAMES" --precision bf16 \
    --no-cuda-graphs --no-e2e --max-frame-s 2
  step decode 45 "$PY" scripts/bench_decode.py --sizes 1920x1080 --frames 100 --hwdec none,cuda
  CLIPHAZE_REQUIRE_GPU=1 step pytest-gpu-slow 120 "$PY" -m pytest -m "gpu and slow" -q -p no:cacheprovider -W "ignore::pytest.PytestConfigWarning" \
    --durations=5 "${GPU_TEST_FILES[@]}"
fi

"$PY" scripts/gpu_check_summary.py "$LOGS" "$RESULTS" "$DRY" || echo "gpu_check: the summary failed (logs kept)"
tar -C "$WORK" -cJf "$RESULTS/logs.tar.xz" logs
echo "gpu_check: wrote $(ls "$RESULTS" | tr '\n' ' ')into $RESULTS in ${SECONDS}s"
