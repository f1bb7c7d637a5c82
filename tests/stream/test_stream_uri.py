"""stream.uri: kinds, formats, credentials kept out of every printed form."""

from __future__ import annotations

import pytest

from stream.errors import BadUriError
from stream.uri import parse_sink, parse_source, redact


@pytest.mark.parametrize(
    ("text", "kind", "live"),
    [
        ("clip.mp4", "file", False),
        ("file:///data/clip.mkv", "file", False),
        ("-", "pipe", False),
        ("/dev/video0", "v4l2", True),
        ("rtsp://cam.local:554/stream1", "rtsp", True),
        ("rtsps://cam.local/stream1", "rtsp", True),
        ("rtmp://host/live/key", "rtmp", True),
        ("srt://host:9000?mode=caller", "srt", True),
        ("https://host/video.mp4", "http", False),
        ("https://host/live/index.m3u8", "hls", False),
    ],
)
def test_parse_source_kinds(text: str, kind: str, live: bool) -> None:
    spec = parse_source(text)
    assert (spec.kind, spec.is_live) == (kind, live)


def test_credentials_never_printed() -> None:
    spec = parse_source("rtsp://admin:hunter2@10.0.0.5:554/live")
    assert spec.username == "admin" and spec.password == "hunter2"
    assert "hunter2" in spec.url  # what FFmpeg gets
    for text in (str(spec), repr(spec), spec.display, f"{spec}"):
        assert "hunter2" not in text
        assert "admin:***@10.0.0.5" in text
    sink = parse_sink("rtsp://pub:topsecret@mediamtx:8554/dehazed")
    assert sink.format == "rtsp" and "topsecret" not in repr(sink) + str(sink)


def test_redact() -> None:
    assert redact("rtmp://u:p%40ss@h/app") == "rtmp://u:***@h/app"
    assert redact("rtsp://h/x") == "rtsp://h/x"
    assert redact("/plain/path.mp4") == "/plain/path.mp4"


@pytest.mark.parametrize("text", ["gopher://x/y", "", "rtsp:///nohost", "rtsp://h:notaport/x"])
def test_bad_source(text: str) -> None:
    with pytest.raises(BadUriError):
        parse_source(text)


@pytest.mark.parametrize(
    ("text", "fmt", "kind", "muxer"),
    [
        ("out.mp4", None, "file", "mp4"),
        ("out.MKV", None, "file", "matroska"),
        ("out.ts", None, "file", "mpegts"),
        ("live/index.m3u8", None, "file", "hls"),
        ("rec/cam_%05d.mp4", None, "segments", "mp4"),
        ("rec/cam_%Y%m%d-%H%M%S.mkv", None, "segments", "matroska"),
        ("-", None, "pipe", "mpegts"),
        ("-", "nut", "pipe", "nut"),
        ("-", "y4m", "pipe", "yuv4mpegpipe"),
        ("-", "rawvideo", "pipe", "rawvideo"),
        ("rtmp://host/live/key", None, "rtmp", "flv"),
        ("srt://host:9000", None, "srt", "mpegts"),
    ],
)
def test_parse_sink(text: str, fmt: str | None, kind: str, muxer: str) -> None:
    spec = parse_sink(text, fmt)
    assert (spec.kind, spec.format) == (kind, muxer)


@pytest.mark.parametrize(
    ("text", "fmt"), [("out.avi2", None), ("noext", None), ("-", "gif89"), ("ftp://h/x.mp4", None)]
)
def test_bad_sink(text: str, fmt: str | None) -> None:
    with pytest.raises(BadUriError):
        parse_sink(text, fmt)
