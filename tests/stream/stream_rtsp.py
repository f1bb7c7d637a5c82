"""The GStreamer RTSP test camera as a subprocess (see rtsp_server.py), and free-port helpers."""

from __future__ import annotations

import select
import socket
import subprocess
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's interpreter, the one with python3-gi
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
SERVER_START_S = 15.0  # deadline for the server to print READY
SERVER_STOP_S = 5.0


def free_port_pair() -> int:
    """A port P such that P and P + 1 are free on 127.0.0.1 (the server uses both)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port pair")


class RtspServer:
    """GStreamer RTSP server subprocess: ``/cam`` on ``port``, ``/secure`` (basic auth) on ``port + 1``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def secure_url(self, user: str, password: str) -> str:
        return f"rtsp://{user}:{password}@127.0.0.1:{self.port + 1}/secure"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVER_SCRIPT), str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], SERVER_START_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"RTSP test server did not start: {line!r}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(SERVER_STOP_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(SERVER_STOP_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


