"""Describe a source (``cliphaze probe``), optionally in a child process so a decoder crash cannot take
the caller down.

The child gets the URI on stdin (never on its command line, where ``ps`` would show a password) and
answers one JSON line.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from fractions import Fraction

from stream.errors import SourceOpenError, StreamError
from stream.records import AudioInfo, VideoInfo
from stream.source import SourceOptions, open_source
from stream.uri import parse_source

CHILD_GRACE_S = 5.0  # interpreter start-up on top of the open deadline
_FRACTIONS = ("time_base", "fps")


def probe(uri: str, timeout_s: float = 10.0, *, isolate: bool = False) -> VideoInfo:
    """Open ``uri``, read its first frame, and describe it.

    Args:
        uri: Anything ``open_source`` accepts.
        timeout_s: Open deadline.
        isolate: Probe in a child process (a crashing decoder becomes a ``SourceOpenError``).

    Returns:
        The source's ``VideoInfo`` (without stream-copy templates when isolated).

    Raises:
        SourceOpenError: Cannot be opened, timed out, or the decoder crashed.
    """
    if isolate:
        return _probe_in_child(uri, timeout_s)
    with open_source(uri, SourceOptions(open_timeout_s=timeout_s, queue_size=1, live_queue_size=1)) as source:
        assert source.info is not None
        return source.info


def info_to_json(info: VideoInfo) -> str:
    """One-line JSON of a ``VideoInfo`` (fractions as strings, no templates)."""
    data = dataclasses.asdict(dataclasses.replace(info, audio=()))
    data["audio"] = [
        {**dataclasses.asdict(dataclasses.replace(a, template=None)), "time_base": str(a.time_base), "template": None}
        for a in info.audio
    ]
    for key in _FRACTIONS:
        data[key] = None if data[key] is None else str(data[key])
    return json.dumps(data)


def info_from_json(text: str) -> VideoInfo:
    """Inverse of ``info_to_json``."""
    data = json.loads(text)
    for key in _FRACTIONS:
        data[key] = None if data[key] is None else Fraction(data[key])
    data["audio"] = tuple(
        AudioInfo(**{**a, "time_base": Fraction(a["time_base"]), "template": None}) for a in data["audio"]
    )
    return VideoInfo(**data)


def _probe_in_child(uri: str, timeout_s: float) -> VideoInfo:
    display = parse_source(uri).display
    try:
        done = subprocess.run(
            [sys.executable, "-m", "stream.probe", str(timeout_s)],
            input=uri, capture_output=True, text=True, timeout=timeout_s + CHILD_GRACE_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise SourceOpenError(f"probing {display} timed out after {timeout_s:g} s") from exc
    if done.returncode < 0:
        raise SourceOpenError(f"the decoder crashed while probing {display} (signal {-done.returncode})")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        message = lines[-1] if lines else f"probe failed with exit code {done.returncode}"
        raise SourceOpenError(message)
    return info_from_json(lines[-1])


def _child_main() -> int:
    timeout_s = float(sys.argv[1])
    uri = sys.stdin.read().strip()
    try:
        info = probe(uri, timeout_s)
    except StreamError as exc:
        print(str(exc))
        return 1
    print(info_to_json(info))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
