#!/usr/bin/env bash
# Build .gpu/, the carry folder of scripts/gpu_check.sh and scripts/gpu_train.sh, and check that what travels
# fits the GPU machine's 64 MiB.
#
#   scripts/pack_gpu.sh              # .gpu/site.tar.xz + .gpu/commit.txt (about 4 minutes: pip download, xz -9e)
#                                    #   + .gpu/content.tar, the broader training content (scripts/build_content_pack.py:
#                                    #   apt-get download of three Debian wallpaper packages, about 5 MB)
#   scripts/pack_gpu.sh --project    # also .gpu/proj.tar.xz (git archive HEAD | xz -9)
#   scripts/pack_gpu.sh --check      # build nothing: measure the working tree and the project archive (xz -1,
#                                    #   an upper bound of -9) and check the sums against 64 MiB
#
# site.tar.xz holds the packages the GPU image lacks (docs: /work/shared/docs/gpu-notes.md), from Python 3.12
# manylinux wheels fetched with `pip download --no-deps --only-binary=:all:` (46 MB as wheels), unpacked and
# re-packed as one tar | xz -9e (33.6 MB, 4 s to unpack). On the GPU machine
# gpu_check.sh unpacks it into /tmp/site and puts it on PYTHONPATH; nothing is pip-installed there.
# What travels: the working tree (tracked and untracked-not-ignored files: 20 MB, 19 MB of it the shipped
# bundle) plus .gpu/ (git-ignored, named in `carry`). Environment: PYTHON (the pip to download with).
set -euo pipefail
cd "$(dirname "$0")/.."

LIMIT_BYTES=$((64 * 1024 * 1024))
# site.tar.xz of the pinned packages below, as built here on 2026-12-04 (used by --check when it is not built).
# Unpacked into /tmp/site, av and kornia_rs imported under Python 3.12 (av's FFmpeg lists cuda among its devices).
MEASURED_SITE_XZ_BYTES=33627036
PACKAGES=(av==18.1.0 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 kornia==0.9.0 kornia_rs==0.2.0
  pytorch-msssim==1.0.0 scikit-video==1.1.11
  pytest-timeout==2.4.0)  # pyproject's pytest `timeout` option: without the plugin pytest stops at start
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
PY="${PYTHON:-python3}"
DEST=.gpu
MODE=site
case "${1:-}" in
  --project) MODE=project ;;
  --check) MODE=check ;;
  "") ;;
  *) echo "usage: $0 [--project|--check]" >&2; exit 2 ;;
esac

tree_bytes() {  # what the device call sends besides the carry: tracked + untracked-not-ignored files
  git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}'
}
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }

if [ "$MODE" = "check" ]; then
  tree=$(tree_bytes)
  site=$MEASURED_SITE_XZ_BYTES
  [ -f "$DEST/site.tar.xz" ] && site=$(stat -c %s "$DEST/site.tar.xz")
  proj=$(git archive HEAD | xz -1 -T2 | wc -c)
  echo "working tree $(mib "$tree"), site.tar.xz $(mib "$site"), project archive (xz -1) $(mib "$proj")"
  echo "tree + site: $(mib $((tree + site))) of $(mib $LIMIT_BYTES)"
  echo "project archive + site (carry alone, for another tree): $(mib $((proj + site))) of $(mib $LIMIT_BYTES)"
  [ $((tree + site)) -le $LIMIT_BYTES ] && [ $((proj + site)) -le $LIMIT_BYTES ]
  exit
fi

git check-ignore -q "$DEST" || { echo "$DEST is not git-ignored: it would travel twice" >&2; exit 1; }
mkdir -p "$DEST"
tmp=$(mktemp -d /tmp/cliphaze-pack.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d "$tmp/wheels" "${PACKAGES[@]}"
mkdir -p "$tmp/site"
for wheel in "$tmp"/wheels/*.whl; do
  "$PY" -m zipfile -e "$wheel" "$tmp/site"
done
tar -C "$tmp/site" -cf - . | xz -9e -T0 >"$DEST/site.tar.xz"
git describe --always --dirty >"$DEST/commit.txt"
"$PY" scripts/build_content_pack.py --out "$DEST/content.tar"
if [ "$MODE" = "project" ]; then
  git archive HEAD | xz -9 -T0 >"$DEST/proj.tar.xz"
fi
carry=$(du -sb "$DEST" | cut -f1)
tree=$(tree_bytes)
echo "wheels $(du -sb "$tmp/wheels" | cut -f1 | xargs -I{} awk 'BEGIN {printf "%.1f MiB", {} / 1048576}'), \
carry $DEST $(mib "$carry"), working tree $(mib "$tree")"
if [ "$MODE" = "project" ]; then
  echo "carry alone (the project inside it): $(mib "$carry") of $(mib $LIMIT_BYTES), plus the session's own tree"
  [ "$carry" -le $LIMIT_BYTES ]
else
  echo "tree + carry: $(mib $((tree + carry))) of $(mib $LIMIT_BYTES)"
  [ $((tree + carry)) -le $LIMIT_BYTES ]
fi
