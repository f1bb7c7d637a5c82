"""Every bad input and output gives a typed error with one clear line, fast, without passwords."""

from __future__ import annotations

import contextlib
import socket
import time
import traceback
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import stream_media

from stream.errors import BadUriError, SinkOpenError, SourceOpenError, StreamError
from stream.records import Frame, VideoInfo
from stream.sink import open_sink
from stream.source import SourceOptions, open_source

FAST_FAIL_S = 3.0  # refused connections and local errors must not wait for the 10 s open deadline
INFO = VideoInfo(64, 48, Fraction(1, 25), Fraction(25), "h264", "yuv420p", "tv", "bt709")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _open_error(source: str, match: str) -> SourceOpenError:
    t0 = time.monotonic()
    with pytest.raises(SourceOpenError, match=match) as info:
        open_source(source, SourceOptions(open_timeout_s=5.0))
    assert time.monotonic() - t0 < FAST_FAIL_S
    message = str(info.value)
    assert "\n" not in message
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    _open_error(str(tmp_path / "nope.mp4"), "no such file")


def test_directory(tmp_path: Path) -> None:
    _open_error(str(tmp_path), "is a directory")


@pytest.mark.parametrize(("name", "content"), [("notes.txt", b"hello\nthis is text\n"), ("noise.mp4", None)])
def test_not_video(tmp_path: Path, name: str, content: bytes | None) -> None:
    path = tmp_path / name
    path.write_bytes(content if content is not None else bytes(range(256)) * 80)
    _open_error(str(path), "not a video file")


def test_audio_only(tmp_path: Path) -> None:
    path = tmp_path / "sound.m4a"
    stream_media.ffmpeg("-f", "lavfi", "-i", "sine", "-t", "0.5", "-c:a", "aac", str(path))
    _open_error(str(path), r"no video stream .*audio")


def test_refused_rtsp_port_fast_and_password_free() -> None:
    url = f"rtsp://admin:pa55word@127.0.0.1:{_closed_port()}/cam"
    err = _open_error(url, "cannot connect")
    assert "admin:***@" in str(err)
    full = "".join(traceback.format_exception(err))  # the whole chained traceback
    assert "pa55word" not in full


def test_refused_http() -> None:
    _open_error(f"http://127.0.0.1:{_closed_port()}/clip.mp4", "cannot connect")


def test_bad_scheme() -> None:
    with pytest.raises(BadUriError, match="unsupported source scheme"):
        open_source("gopher://host/x")


def test_unknown_output_extension(tmp_path: Path) -> None:
    with pytest.raises(BadUriError, match="unknown output extension"):
        open_sink(tmp_path / "out.abc", INFO)


@pytest.mark.parametrize("where", ["missing_dir/out.mp4", "a_file/out.mp4"])
def test_unwritable_output(tmp_path: Path, where: str) -> None:
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SinkOpenError, match="does not exist"):
        open_sink(tmp_path / where, INFO)


def test_output_is_directory(tmp_path: Path) -> None:
    (tmp_path / "out.mp4").mkdir()
    with pytest.raises(SinkOpenError, match="is a directory"):
        open_sink(tmp_path / "out.mp4", INFO)


def test_publish_target_refused_without_password() -> None:
    url = f"rtsp://pub:s3cr3t@127.0.0.1:{_closed_port()}/out"
    frame = Frame(np.zeros((48, 64, 3), np.uint8), 0, INFO.time_base, 0)
    with pytest.raises(StreamError) as info:  # noqa: PT012 - RTSP connects at open or at the first packet
        sink = open_sink(url, INFO)
        try:
            sink.write(frame)
        finally:
            with contextlib.suppress(StreamError):
                sink.close()
    text = "".join(traceback.format_exception(info.value))
    assert "s3cr3t" not in text and "pub:***@" in str(info.value)
