"""Helpers of the serve tests: GStreamer RTSP cameras, a serve subprocess, its HTTP status, ffprobe checks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
STREAM_TESTS = REPO / "tests" / "stream"
FFPROBE = "ffprobe"
RATE = 25  # the GStreamer test cameras' frame rate
WAIT_S = 90.0


def rtsp_server_class() -> Any:
    """The stream tests' GStreamer camera (tests/stream/stream_rtsp.py), imported from its folder."""
    sys.path.insert(0, str(STREAM_TESTS))
    try:
        from stream_rtsp import SYSTEM_PYTHON, RtspServer, free_port_pair
    finally:
        sys.path.remove(str(STREAM_TESTS))
    return SYSTEM_PYTHON, RtspServer, free_port_pair


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, cameras: dict[str, tuple[str, Path]], extra: str = "") -> Path:
    """YAML with one dcp camera per entry: name -> (source, output file)."""
    lines = ["defaults:", "  model: dcp", "cameras:"]
    for name, (source, sink) in cameras.items():
        lines += [f"  - name: {name}", f"    source: {source}", f"    sink: {sink}"]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def start_serve(config: Path, port: int, log: Path, *extra: str, env: dict[str, str] | None = None
                ) -> subprocess.Popen[bytes]:  # fmt: skip
    """``python -m cli serve CONFIG`` with its log in a file (a full stderr pipe would block it)."""
    with log.open("wb") as handle:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "cli", "serve", str(config), "--device", "cpu",
                                 "--http-port", str(port), *extra], stdout=subprocess.DEVNULL, stderr=handle,
                                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})  # fmt: skip


def get_json(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get_text(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read().decode()


def cameras(port: int) -> dict[str, dict[str, Any]]:
    """``/cameras`` by name ({} while the endpoint is not up yet)."""
    try:
        _, body = get_json(port, "/cameras")
    except OSError:
        return {}
    return {c["name"]: c for c in body["cameras"]}


def wait_for(proc: subprocess.Popen[bytes], log: Path, condition: Callable[[], bool], what: str,
             timeout_s: float = WAIT_S) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.poll() is None, f"serve exited {proc.returncode}: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {log.read_text()[-3000:]}"
        time.sleep(0.2)


def stop_serve(proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def frame_pts_s(path: Path) -> list[float]:
    """Presentation times of every decoded video frame, by ffprobe, in decode order."""
    command = [FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time", "-of", "csv=p=0"]
    out = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=120, check=True)
    return [float(line.split(",")[0]) for line in out.stdout.split() if line.strip() and line != "N/A"]


def assert_monotonic(pts: list[float], path: Path) -> None:
    steps = [b - a for a, b in zip(pts, pts[1:])]
    assert pts and all(step > 0 for step in steps), f"{path}: PTS not strictly increasing"
