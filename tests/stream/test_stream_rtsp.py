"""RTSP against real servers: GStreamer's RTSP server (pull), a silent TCP listener, PyAV's listener (push)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import av
import pytest
from stream_rtsp import RtspServer, free_port_pair

from stream.encoder import EncoderConfig
from stream.errors import SinkOpenError, SourceOpenError
from stream.reconnect import ReconnectPolicy
from stream.sink import open_sink
from stream.source import FrameSource, SourceOptions, open_source
from stream.uri import parse_source

pytestmark = pytest.mark.rtsp

DEADLINE_SLACK_S = 1.5  # open_source's grace plus scheduling on 2 shared cores
QUICK = ReconnectPolicy(initial_s=0.2, cap_s=1.0, jitter=0.1)
LISTEN_S = 20  # PyAV listener's listen_timeout (seconds)


def test_pull_from_live_server(rtsp_server: RtspServer) -> None:
    options = SourceOptions(live_queue_size=64, read_timeout_s=3.0)
    with open_source(rtsp_server.url, options) as src:
        assert src.info.is_live and (src.info.width, src.info.height) == (160, 120)
        assert src.info.codec == "h264" and src.info.fps == 25
        frames = []
        for frame in src:
            frames.append(frame)
            if len(frames) == 30:
                break
        assert src.stats.state == "running"
    pts = [f.pts for f in frames]
    assert pts[0] == 0 and all(b > a for a, b in zip(pts, pts[1:]))
    span_s = float((pts[-1] - pts[0]) * frames[0].time_base)
    assert 29 / 25 - 0.1 < span_s < 29 / 25 + 0.1  # real 25 fps timing survives
    assert frames[0].data.shape == (120, 160, 3)


def test_second_client_of_the_camera_keeps_the_first_clients_pts_advancing(
    rtsp_server: RtspServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The test camera's pipeline is shared (``set_shared``): GStreamer seeks it back to 0 when a second client
    sends PLAY, so the first client's RTP clock steps back while its frames keep coming every 40 ms. Its PTS
    stood still before (one tick per frame, as many frames as the camera had run); they must go on at 25 fps."""
    options = SourceOptions(live_queue_size=64, read_timeout_s=3.0)  # room for the frames decoded meanwhile
    with caplog.at_level(logging.WARNING, logger="stream.source"), open_source(rtsp_server.url, options) as first:
        it = iter(first)
        before = [next(it) for _ in range(10)]
        with open_source(rtsp_server.url, SourceOptions(read_timeout_s=3.0)):  # the second client's PLAY
            after = [next(it) for _ in range(60)]
        stats = first.stats
    pts = [f.pts for f in before + after]
    step = 1 / (25 * before[0].time_base)
    steps = [b - a for a, b in pairwise(pts)]
    assert stats.drops == 0 and all(0.5 * step < s < 1.5 * step for s in steps), steps
    span_s = float((pts[-1] - pts[0]) * before[0].time_base)
    assert abs(span_s - 69 / 25) < 0.2  # 70 frames, 2.76 s
    assert "clock jumped" in caplog.text  # the server did step the clock back (else this test proves nothing)


@pytest.mark.slow
def test_reconnect_after_server_restart_keeps_pts_monotonic(rtsp_server: RtspServer) -> None:
    options = SourceOptions(live_queue_size=64, read_timeout_s=2.0, reconnect=QUICK)
    with open_source(rtsp_server.url, options) as src:
        it = iter(src)
        before = [next(it) for _ in range(10)]
        rtsp_server.stop()
        time.sleep(0.5)
        rtsp_server.start()
        after = []
        deadline = time.monotonic() + 20
        while src.stats.reconnects == 0 or len(after) < 10:
            assert time.monotonic() < deadline, src.stats
            frame = next(it)
            if src.stats.reconnects:
                after.append(frame)
        stats = src.stats
    pts = [f.pts for f in before + after]
    assert all(b > a for a, b in zip(pts, pts[1:])), pts
    indexes = [f.index for f in before + after]
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)
    assert stats.reconnects >= 1 and stats.state == "running"


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a camera hung after accept, PyAV #584)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    server.close()


def test_silent_server_fails_open_within_deadline(silent_listener: int) -> None:
    t0 = time.monotonic()
    with pytest.raises(SourceOpenError, match="timed out|did not open"):
        open_source(f"rtsp://127.0.0.1:{silent_listener}/cam", SourceOptions(open_timeout_s=1.0))
    assert time.monotonic() - t0 < 1.0 + DEADLINE_SLACK_S


def test_silent_server_reports_stalled_while_waiting(silent_listener: int) -> None:
    options = SourceOptions(open_timeout_s=0.5, wait_for_source=True, reconnect=QUICK)
    src = FrameSource(parse_source(f"rtsp://127.0.0.1:{silent_listener}/cam"), options)
    starter = threading.Thread(target=lambda: pytest.raises(SourceOpenError, src.start), daemon=True)
    starter.start()
    try:
        deadline = time.monotonic() + 0.5 + DEADLINE_SLACK_S
        while src.stats.state != "stalled":
            assert time.monotonic() < deadline, src.stats
            time.sleep(0.01)
        assert src.stats.stalls >= 1 and "open timed out" in src.stats.last_reason
    finally:
        src.close()
        starter.join(5)
    assert not starter.is_alive()


def test_wrong_credentials_are_reported_without_the_password(rtsp_server: RtspServer) -> None:
    with pytest.raises(SourceOpenError, match="authentication failed") as info:
        open_source(rtsp_server.secure_url("viewer", "wrong-pw-123"))
    assert "wrong-pw-123" not in _chain_text(info.value) and "viewer:***@" in str(info.value)
    with open_source(rtsp_server.secure_url("viewer", "s3cret-pw")) as src:
        assert next(iter(src)).data.shape == (120, 160, 3)


def _chain_text(exc: BaseException | None) -> str:
    """Every message and argument in an exception chain (what a traceback would print about them)."""
    parts = []
    while exc is not None:
        parts += [type(exc).__name__, str(exc), repr(exc.args)]
        exc = exc.__cause__ or exc.__context__
    return " ".join(parts)


def test_publish_into_pyav_listener(clips: dict[str, Path]) -> None:
    url = f"rtsp://127.0.0.1:{free_port_pair()}/live"
    received: list[int] = []
    errors: list[BaseException] = []

    def listen() -> None:
        try:
            with av.open(url, options={"rtsp_flags": "listen", "listen_timeout": str(LISTEN_S)}) as container:
                received.extend(frame.pts for frame in container.decode(video=0))
        except av.error.FFmpegError as exc:  # surfaced by the assertion below
            errors.append(exc)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    with open_source(clips["bikes"]) as src:
        sink = None
        deadline = time.monotonic() + 10
        while sink is None:  # the listener needs a moment to bind
            try:
                sink = open_sink(url, src.info, EncoderConfig(preset="ultrafast", low_latency=True))
            except SinkOpenError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        with sink:
            for frame in src:
                sink.write(frame)
                if frame.index == 49:
                    break
    listener.join(30)
    assert not errors and not listener.is_alive()
    assert len(received) == 50
    stamped = [p for p in received if p is not None]
    assert len(stamped) >= 45 and all(b > a for a, b in zip(stamped, stamped[1:])), received
