"""Parse source and sink strings into typed specs; keep credentials out of every printed form.

Pure logic: no FFmpeg, no I/O. ``parse_source("rtsp://u:p@cam/x")`` gives a ``SourceSpec`` whose
``str()``/``repr()`` show ``rtsp://u:***@cam/x``; only ``.url`` (what FFmpeg gets) holds the password.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

from stream.errors import BadUriError

STDIO = "-"  # stdin for sources, stdout for sinks
REDACTED = "***"  # what a password looks like in logs and errors
V4L2_PREFIX = "/dev/video"  # V4L2 capture devices

# scheme -> kind
_SCHEMES = {
    "rtsp": "rtsp",
    "rtsps": "rtsp",
    "rtmp": "rtmp",
    "rtmps": "rtmp",
    "srt": "srt",
    "http": "http",
    "https": "http",
    "file": "file",
    "v4l2": "v4l2",
}
_LIVE_KINDS = frozenset({"rtsp", "rtmp", "srt", "v4l2"})  # http is live only for HLS/streams, decided at open
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_AUTHORITY_RE = re.compile(r"^[^/:@]*://")  # what redact treats as a URL: anything up to a first "://"

# file extension -> FFmpeg muxer for sinks
SINK_FORMATS = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".ts": "mpegts",
    ".m3u8": "hls",
    ".nut": "nut",
    ".y4m": "yuv4mpegpipe",
}
# explicit formats accepted for stdout / fmt=
PIPE_FORMATS = {
    "mpegts": "mpegts",
    "ts": "mpegts",
    "nut": "nut",
    "y4m": "yuv4mpegpipe",
    "yuv4mpegpipe": "yuv4mpegpipe",
    "rawvideo": "rawvideo",
    "matroska": "matroska",
    "mkv": "matroska",
    "flv": "flv",
    "mp4": "mp4",
}
_PUBLISH_FORMATS = {"rtsp": "rtsp", "rtmp": "flv", "srt": "mpegts"}
DEFAULT_PIPE_FORMAT = "mpegts"


def redact(url: str) -> str:
    """Replace the password of a URL with ``***`` (``rtsp://user:***@host/path``).

    Args:
        url: Any string; non-URLs are returned unchanged.

    Returns:
        The string safe to log.
    """
    match = _AUTHORITY_RE.match(url)  # also "://u:p@h" with a mistyped or missing scheme
    if match is None:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    cut_early = parts is not None and "@" in parts.path + parts.query + parts.fragment
    if parts is not None and parts.password is not None and not cut_early:
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))
    # A password with an unencoded '/', '?' or '#' ends the authority early for urlsplit ("rtsp://admin:pa/ss@cam",
    # an '@' left in the path): hide everything from the first ':' of the userinfo to the last '@'.
    # When the URL is ambiguous ("rtsp://cam:554/a@b") this hides too much rather than too little.
    rest = url[match.end() :]
    at = rest.rfind("@")
    if at < 0 or ":" not in rest[:at]:
        return url
    user = rest[:at].split(":", 1)[0]
    return f"{url[: match.end()]}{user}:{REDACTED}{rest[at:]}"


@dataclass(frozen=True)
class SourceSpec:
    """Where frames come from."""

    kind: str  # file | rtsp | rtmp | srt | http | hls | v4l2 | pipe
    url: str = field(repr=False)  # what FFmpeg opens; may contain a password, never printed
    username: str | None = None  # from the URL, None when absent
    password: str | None = field(default=None, repr=False)  # never printed
    is_live: bool = False  # kind default: network cameras and devices are live, files are not

    @property
    def display(self) -> str:
        """The URL with its password replaced by ``***``."""
        return redact(self.url)

    def __str__(self) -> str:
        return self.display

    def __repr__(self) -> str:
        return f"SourceSpec(kind={self.kind!r}, url={self.display!r}, is_live={self.is_live})"


@dataclass(frozen=True)
class SinkSpec:
    """Where frames go."""

    kind: str  # file | rtsp | rtmp | srt | pipe | segments
    url: str = field(repr=False)  # file path or publish URL; may contain a password
    format: str = ""  # FFmpeg muxer name, e.g. "mp4", "mpegts", "hls", "rtsp", "flv"
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        """The URL with its password replaced by ``***``."""
        return redact(self.url)

    @property
    def is_file(self) -> bool:
        return self.kind in ("file", "segments")

    def __str__(self) -> str:
        return self.display

    def __repr__(self) -> str:
        return f"SinkSpec(kind={self.kind!r}, url={self.display!r}, format={self.format!r})"


def _split(text: str) -> tuple[str | None, SplitResult | None]:
    match = _SCHEME_RE.match(text)
    if match is None:
        return None, None
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError as exc:
        raise BadUriError(f"malformed URL: {redact(text)}") from exc
    return match.group(1).lower(), parts


def parse_source(text: str | os.PathLike[str]) -> SourceSpec:
    """Classify a source string.

    Args:
        text: A path, ``-`` (stdin), ``/dev/videoN``, or a URL (rtsp, rtsps, rtmp, srt, http(s), file).

    Returns:
        The typed spec.

    Raises:
        BadUriError: Empty string, unknown scheme, or a URL without a host.
    """
    text = os.fspath(text).strip()
    if not text:
        raise BadUriError("empty source")
    if text == STDIO:
        return SourceSpec(kind="pipe", url="pipe:0", is_live=False)
    scheme, parts = _split(text)
    if scheme is None or parts is None:
        if text.startswith(V4L2_PREFIX):
            return SourceSpec(kind="v4l2", url=text, is_live=True)
        return SourceSpec(kind="file", url=text, is_live=False)
    kind = _SCHEMES.get(scheme)
    if kind is None:
        raise BadUriError(f"unsupported source scheme {scheme!r} in {redact(text)}")
    if kind == "file":
        return SourceSpec(kind="file", url=parts.path, is_live=False)
    if kind == "v4l2":  # a device path; a userinfo part would be meaningless (and must not be printed)
        return SourceSpec(kind="v4l2", url=parts.path or parts.hostname or "", is_live=True)
    if not parts.hostname:
        raise BadUriError(f"no host in {redact(text)}")
    if kind == "http" and parts.path.lower().endswith(".m3u8"):
        kind = "hls"
    return SourceSpec(
        kind=kind,
        url=text,
        username=parts.username,
        password=parts.password,
        is_live=kind in _LIVE_KINDS,
    )


def parse_sink(text: str | os.PathLike[str], fmt: str | None = None) -> SinkSpec:
    """Classify a sink string and pick its muxer.

    Args:
        text: ``-`` (stdout), a file path (format from the extension, ``%`` patterns mean segmented
            recording), or a publish URL (rtsp, rtmp, srt).
        fmt: Explicit muxer (``mpegts``, ``nut``, ``y4m``, ``rawvideo``, ...); required for nothing,
            defaults to MPEG-TS on stdout.

    Returns:
        The typed spec.

    Raises:
        BadUriError: Unknown scheme or extension, or an unknown explicit format.
    """
    text = os.fspath(text).strip()
    if not text:
        raise BadUriError("empty output")
    explicit = None
    if fmt:
        explicit = PIPE_FORMATS.get(fmt.lower())
        if explicit is None:
            raise BadUriError(f"unknown output format {fmt!r}; choose one of {sorted(PIPE_FORMATS)}")
    if text == STDIO:
        return SinkSpec(kind="pipe", url="pipe:1", format=explicit or DEFAULT_PIPE_FORMAT)
    scheme, parts = _split(text)
    if scheme is not None and parts is not None:
        kind = _SCHEMES.get(scheme)
        if kind == "file":
            text = parts.path
        elif kind in _PUBLISH_FORMATS:
            if not parts.hostname:
                raise BadUriError(f"no host in {redact(text)}")
            return SinkSpec(
                kind=kind,
                url=text,
                format=explicit or _PUBLISH_FORMATS[kind],
                username=parts.username,
                password=parts.password,
            )
        else:
            raise BadUriError(f"unsupported output scheme {scheme!r} in {redact(text)}")
    suffix = Path(text).suffix.lower()
    muxer = explicit or SINK_FORMATS.get(suffix)
    if muxer is None:
        raise BadUriError(f"unknown output extension {suffix or '(none)'!r}; use one of {sorted(SINK_FORMATS)}")
    kind = "segments" if "%" in Path(text).name and muxer != "hls" else "file"
    return SinkSpec(kind=kind, url=text, format=muxer)


# URL schemes whose credentials cliphaze fills in from options or the environment (``with_credentials``).
RTSP_SCHEMES = ("rtsp", "rtsps")


def with_credentials(uri: str, user: str | None, password: str | None) -> str:
    """Fill RTSP credentials into a URL: the user when it has none, the password when it names a user without
    one (``rtsp://admin@cam/x`` + ``CLIPHAZE_RTSP_PASSWORD``). Other URLs are returned unchanged."""
    parts = urlsplit(uri)
    if parts.scheme not in RTSP_SCHEMES or parts.password is not None:
        return uri
    name = parts.username if parts.username is not None else (quote(user, safe="") if user else None)
    if name is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[-1]
    userinfo = name + (":" + quote(password, safe="") if password else "")
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))
