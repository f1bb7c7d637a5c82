#!/usr/bin/env bash
# The project's test command (README quick start, CI). Installs what the tests need, then runs them.
#   - Debian packages: ffmpeg/ffprobe and GStreamer's RTSP server (python3-gi), when missing.
#   - Python: this package with its [test] extra, into the active environment (or a .venv it creates).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-rtsp)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing Debian packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -d .venv ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
python -m pip install -q --upgrade pip >/dev/null
# torch==2.14.1 is the build this machine serves from local disk (pip's cap); others resolve from PyPI.
python -m pip install -q "torch==2.14.1" 2>/dev/null || python -m pip install -q torch
python -m pip install -q -e ".[test]"

exec python -m pytest "$@"
