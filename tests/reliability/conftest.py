"""Fixtures of the reliability tests: generated media, a tiny CLIPHaze bundle, the GStreamer RTSP camera."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import reliability_media as media

STREAM_TESTS = Path(__file__).resolve().parents[1] / "stream"


@pytest.fixture(scope="session")
def good_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return media.make_clip(tmp_path_factory.mktemp("media") / "good.mp4")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return media.load_pipeline_fakes().make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture
def rtsp_camera() -> Iterator[object]:
    """The stream tests' GStreamer RTSP camera: ``/cam`` on ``port``, ``/secure`` (basic auth) on ``port + 1``."""
    sys.path.insert(0, str(STREAM_TESTS))
    try:
        from stream_rtsp import SYSTEM_PYTHON, RtspServer, free_port_pair
    finally:
        sys.path.remove(str(STREAM_TESTS))
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.fail("GStreamer RTSP server missing: run scripts/test.sh (it installs the Debian packages)")
    server = RtspServer(free_port_pair())
    server.start()
    try:
        yield server
    finally:
        server.stop()
