#!/usr/bin/env bash
# One short GPU training run of the shipped cliphaze-t (issue 18): continue the shipped bundle (or INIT) on the
# default content plus the broader photo pack, export, evaluate on the fixed held-out split, and leave at most
# 8 files of at most 16 MiB in $OUT. Without a GPU (or with DRY=1) it runs the same path at tiny sizes.
#
# Prepare once, in the checkout the device tool sends (the session's own repository root):
#     bash scripts/pack_gpu.sh                   # .gpu/{content.tar,site.tar.xz}, git-ignored
# Then one device call (at most 10 minutes a command, 15 minutes of device time in all, machine start included):
#     run(command="bash scripts/gpu_train.sh", carry=[".gpu"], timeout_s=600)
# A second run continues the first:  INIT=<the first run's cliphaze-t.safetensors, copied into the repo>.
#
# Recipe on the GPU (scripts/train_default.py; docs/model-card.md "GPU recipe"):
#   stage 1: the shipped small CLIP towers + prompts continue for CLIP_MIN minutes at batch 64 (lr 3e-4,
#            12 loader workers), on the default content and the pack (CLIP_STEPS=0 keeps the shipped towers);
#   stage 2: crops 256, batch 16, bf16 autocast, lr 2e-4 (airlight head x10), warm-up then cosine over the
#            steps that fit: `--steps auto` times a few steps first and sizes the schedule to the minutes left;
#            EMA `auto` (1 - 10/steps, within [0.99, 0.999]); field supervision weight 1 and the airlight head
#            kept (they helped on the CPU runs 2b-2d; their effect at this scale is still to be measured).
#   TRAIN_MIN (default 6.5) bounds stage 1 + stage 2 together: with loading, export and the held-out evaluation
#   the script ends within the device tool's 10 minutes per command.
# Output ($OUT, 8 files): cliphaze-t.safetensors (network in bf16, towers fp32, about 13 MB), run_summary.json
# (steps/s, peak memory, the held-out table, whether the bars are met), train.log, history.jsonl,
# {homogeneous,nonhomogeneous}.csv and _grid.jpg. It prints steps/s, peak memory and the held-out table.
#
# Environment: OUT (default runs/gpu_out), INIT (default the shipped bundle), CARRY (default .gpu),
# TRAIN_MIN, CLIP_MIN, CLIP_STEPS, SEED, DRY=1 (force the dry run), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=${CARRY:-.gpu}
OUT=${OUT:-runs/gpu_out}
INIT=${INIT:-cliphaze/weights/cliphaze-t.safetensors}
PYTHON=${PYTHON:-python3}
RUN=${RUN_DIR:-$(mktemp -d)/run}
MAX_FILE_BYTES=$((16 * 1024 * 1024))
export TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}  # a short log: one progress line every 20 s

if [ -f "$CARRY/site.tar.xz" ]; then
    mkdir -p /tmp/site
    tar xJf "$CARRY/site.tar.xz" -C /tmp/site
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

if [ "${DRY:-0}" != 1 ] && "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    MODE=gpu
    if [ ! -f "$CARRY/content.tar" ]; then
        echo "no $CARRY/content.tar: run scripts/pack_gpu.sh here and carry $CARRY" >&2
        exit 2
    fi
    TRAIN_MIN=${TRAIN_MIN:-6.5}
    CLIP_MIN=${CLIP_MIN:-1}
    ARGS=(--device cuda --amp bf16 --workers 12 --crop 256 --batch 16 --lr 2e-4
          --clip-steps "${CLIP_STEPS:-600}" --clip-batch 64 --clip-lr 3e-4)
else
    MODE=dry
    TRAIN_MIN=${TRAIN_MIN:-0.05}
    CLIP_MIN=${CLIP_MIN:-0.5}
    ARGS=(--device cpu --amp off --workers 0 --crop 32 --batch 2 --lr 2e-4 --threads 2
          --calibration-steps 1 --clip-steps "${CLIP_STEPS:-2}" --clip-batch 2 --clip-lr 3e-4
          --eval-max-side 48 --eval-max-images 1)
fi
STAGE2_MIN=$("$PYTHON" -c "print(max(0.05, $TRAIN_MIN - $CLIP_MIN))")
PACK=()
[ -f "$CARRY/content.tar" ] && PACK=(--content-pack "$CARRY/content.tar")
CLIP=()
[ "${CLIP_STEPS:-1}" != 0 ] && CLIP=(--clip-continue --clip-time-budget-min "$CLIP_MIN")
echo "gpu_train.sh: $MODE run, init $INIT, stage 1 <= $CLIP_MIN min, stage 2 <= $STAGE2_MIN min, run folder $RUN"

mkdir -p "$OUT" "$(dirname "$RUN")"
set +e
"$PYTHON" scripts/train_default.py --out "$RUN" --weights "$RUN/export.safetensors" \
    --towers "$INIT" --init-from "$INIT" --global-airlight --seed "${SEED:-3}" \
    "${CLIP[@]}" --steps auto --time-budget-min "$STAGE2_MIN" --ema auto --field-loss 1.0 --net-dtype bf16 \
    "${PACK[@]}" "${ARGS[@]}" 2>&1 | tee "$OUT/train.log"
status=${PIPESTATUS[0]}
set -e
for f in cliphaze-t.safetensors run_summary.json history.jsonl eval/homogeneous.csv eval/nonhomogeneous.csv \
         eval/homogeneous_grid.jpg eval/nonhomogeneous_grid.jpg; do
    [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/"
done
tail -c $((4 * 1024 * 1024)) "$OUT/train.log" > "$OUT/train.log.tmp" && mv "$OUT/train.log.tmp" "$OUT/train.log"
count=$(find "$OUT" -type f | wc -l)
largest=$(find "$OUT" -type f -printf '%s\n' | sort -n | tail -1)
echo "gpu_train.sh: $count files in $OUT, largest $largest bytes"
if [ "$count" -gt 8 ] || [ "$largest" -gt "$MAX_FILE_BYTES" ]; then
    echo "gpu_train.sh: \$OUT must hold at most 8 files of at most 16 MiB" >&2
    exit 3
fi
exit "$status"
