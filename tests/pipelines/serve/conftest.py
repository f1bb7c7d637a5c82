"""Fixtures of the serve tests: four real GStreamer RTSP cameras."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from serve_helpers import rtsp_server_class


@pytest.fixture
def four_cameras() -> Iterator[list[Any]]:
    """Four GStreamer RTSP servers (``/cam`` on each one's port: 160x120, 25 fps live test pattern)."""
    system_python, server_class, free_port_pair = rtsp_server_class()
    if not os.path.exists(system_python):
        pytest.fail("GStreamer RTSP server missing: run scripts/test.sh (it installs the Debian packages)")
    servers: list[Any] = []
    try:
        for _ in range(4):
            server = server_class(free_port_pair())
            server.start()
            servers.append(server)
        yield servers
    finally:
        for server in servers:
            server.stop()
