"""Mutated media at the decoder front door: bit flips and truncations of small clips never crash or hang the
process. Every decode runs in a child process with a deadline, so a decoder crash would be contained (and
reported as the file that caused it) instead of taking the test run down."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.errors import SourceOpenError
from stream.probe import CHILD_GRACE_S, probe

REPO = Path(__file__).resolve().parents[2]
PROBE_TIMEOUT_S = 5.0
BATCH_FILES = 150  # mutated files decoded in full by one child
BATCH_TIMEOUT_S = 240.0
SEEDS = ("clip.mp4", "clip.ts", "clip.mkv")

# The child: decode every file named on stdin completely through stream.source; one JSON line per file.
DECODE_ALL = """
import json, sys
from stream.errors import StreamError
from stream.source import SourceOptions, open_source
for path in sys.stdin.read().split():
    print(json.dumps({"start": path}), flush=True)
    frames, outcome = 0, "ok"
    try:
        with open_source(path, SourceOptions(open_timeout_s=5.0, read_timeout_s=5.0)) as source:
            for frame in source:
                assert frame.data.ndim == 3 and frame.data.shape[2] == 3
                frames += 1
    except StreamError as exc:
        outcome = type(exc).__name__
    print(json.dumps({"done": path, "outcome": outcome, "frames": frames}), flush=True)
"""


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Small valid clips (12 frames of 64x48 H.264) in three containers."""
    folder = tmp_path_factory.mktemp("seeds")
    out: dict[str, bytes] = {}
    for name in SEEDS:
        path = folder / name
        subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                        "testsrc=size=64x48:rate=25", "-frames:v", "12", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                        "-g", "4", str(path)], check=True, timeout=60)  # fmt: skip
        out[name] = path.read_bytes()
    return out


def mutate(data: bytes, flips: list[tuple[float, int]], keep: float | None) -> bytes:
    """XOR bytes at relative positions; then keep only the first ``keep`` fraction (a truncation)."""
    buf = bytearray(data)
    for where, mask in flips:
        buf[min(len(buf) - 1, int(where * len(buf)))] ^= mask
    return bytes(buf if keep is None else buf[: max(1, int(keep * len(buf)))])


MUTATIONS = st.tuples(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), min_size=0, max_size=24),
    st.one_of(st.none(), st.floats(0.01, 0.99)),
)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(MUTATIONS)
def test_isolated_probe_of_mutated_media(seeds: dict[str, bytes], mutation: tuple) -> None:
    name, flips, keep = mutation
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(mutate(seeds[name], flips, keep))
        started = time.monotonic()
        try:
            info = probe(str(path), PROBE_TIMEOUT_S, isolate=True)
        except SourceOpenError as exc:  # the only way a probe may fail, crash and timeout included
            assert "\n" not in str(exc).strip()
        else:
            assert info.width > 0 and info.height > 0
        assert time.monotonic() - started < PROBE_TIMEOUT_S + CHILD_GRACE_S + 1.0


def test_isolated_probe_contains_a_crashing_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The containment itself: a child killed by a signal becomes a typed one-line error."""
    import signal

    crashing = tmp_path / "python"
    crashing.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crashing.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(crashing))
    with pytest.raises(SourceOpenError, match=f"crashed .*signal {int(signal.SIGSEGV)}"):
        probe(str(tmp_path / "any.mp4"), 2.0, isolate=True)


def test_full_decode_of_mutated_media_never_crashes_or_hangs(seeds: dict[str, bytes], tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    paths = []
    for i in range(BATCH_FILES):
        name = SEEDS[i % len(SEEDS)]
        data = seeds[name]
        flips = [(float(rng.random()), int(rng.integers(1, 256))) for _ in range(int(rng.integers(1, 40)))]
        keep = float(rng.uniform(0.05, 1.0)) if i % 4 == 3 else None
        path = tmp_path / f"m{i:02d}_{name}"
        path.write_bytes(mutate(data, flips, keep))
        paths.append(str(path))
    child = subprocess.run([sys.executable, "-c", DECODE_ALL], check=False, input="\n".join(paths), capture_output=True,
                           text=True, timeout=BATCH_TIMEOUT_S, cwd=REPO)  # fmt: skip
    records = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    started = [r["start"] for r in records if "start" in r]
    done = {r["done"]: r for r in records if "done" in r}
    culprit = started[-1] if started and started[-1] not in done else None
    assert child.returncode == 0, f"decoder crash (code {child.returncode}) on {culprit}: {child.stderr[-2000:]}"
    assert set(done) == set(paths)
    outcomes = {r["outcome"] for r in done.values()}
    assert outcomes <= {"ok", "SourceOpenError", "DecodeError", "StreamError", "SourceTimeout"}, outcomes
    decoded = sum(r["outcome"] == "ok" and r["frames"] > 0 for r in done.values())
    print(f"mutated files: {decoded} decoded, outcomes {sorted(outcomes)}")
    assert decoded >= BATCH_FILES // 4  # the mutations leave most files partly decodable: not all refused
