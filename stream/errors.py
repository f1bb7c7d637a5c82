"""Exception hierarchy of stream/. The CLI turns each into one line and an exit code."""

from __future__ import annotations


class StreamError(Exception):
    """Base class of every stream/ error. Messages never contain credentials."""


class BadUriError(StreamError, ValueError):
    """A source or sink string that cannot be understood (unknown scheme, malformed URL)."""


class SourceOpenError(StreamError):
    """The source could not be opened: missing file, not video, unreachable host, bad credentials."""


class SourceLost(StreamError, ConnectionError):
    """A live source stopped delivering and could not be recovered within its policy."""


class DecodeError(StreamError):
    """Decoding failed in a way that cannot be skipped."""


class SinkOpenError(StreamError):
    """The output cannot be created: unwritable path, unknown muxer, unreachable publish target."""


class EncodeError(StreamError):
    """Encoding or muxing failed mid-run (e.g. disk full, publish target gone)."""


class SourceTimeout(SourceOpenError, TimeoutError):
    """The source accepted the connection but sent nothing within the deadline (a silent camera)."""
