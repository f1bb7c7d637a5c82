"""Signals at any moment of ``cliphaze dehaze``: SIGINT/SIGTERM finalize and exit 0; SIGKILL leaves a .part
that decodes up to its last fragment. Moments are taken from what the process visibly did, not from sleeps."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import reliability_media as media

WAIT_S = 120.0
EXIT_HARD_STOP = 130
MID_RUN_BYTES = 25_000  # a few 0.4 s fragments of the test pattern


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 s of a 320x180 test pattern (250 frames, about 40 kB/s once encoded): dcp needs several seconds."""
    return media.make_clip(tmp_path_factory.mktemp("signals") / "pattern.mp4", 10.0, "320x180", source="testsrc2")


def catches(pid: int, sig: signal.Signals) -> bool:
    """True once the process installed a handler for ``sig`` (SigCgt in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask & (1 << (sig - 1)))


def wait_until(proc: subprocess.Popen[bytes], condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "the moment never came"
        time.sleep(0.01)


def start(clip: Path, out: Path, stats: Path) -> subprocess.Popen[bytes]:
    return media.cli_process("dehaze", str(clip), "-o", str(out), "--model", "dcp", "--gop", "0.4",
                             "--stats", str(stats))  # fmt: skip


def part_of(out: Path) -> Path:
    return Path(str(out) + ".part")


MOMENTS: dict[str, Callable[[subprocess.Popen[bytes], Path], bool]] = {
    # handlers installed, the model, source and output still loading / opening
    "loading": lambda proc, out: catches(proc.pid, signal.SIGTERM),
    "output_opened": lambda proc, out: part_of(out).exists(),
    "mid_run": lambda proc, out: part_of(out).exists() and part_of(out).stat().st_size > MID_RUN_BYTES,
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "moment"),
    [(signal.SIGTERM, "loading"), (signal.SIGINT, "output_opened"), (signal.SIGTERM, "mid_run")],
)
def test_signal_finalizes_and_exits_zero(sig: signal.Signals, moment: str, tmp_path: Path, clip: Path) -> None:
    out, stats_path = tmp_path / "out.mp4", tmp_path / "stats.json"
    proc = start(clip, out, stats_path)
    wait_until(proc, lambda: MOMENTS[moment](proc, out))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    assert out.exists() and not part_of(out).exists()
    stats = json.loads(stats_path.read_text())
    assert stats["stopped_early"] and 1 <= stats["frames_out"] < 250
    assert media.count_frames(out) == stats["frames_out"]  # finalized: every written frame decodes


@pytest.mark.slow
def test_second_signal_quits_at_once_leaving_a_playable_part(tmp_path: Path, clip: Path) -> None:
    out, stats_path = tmp_path / "out.mp4", tmp_path / "stats.json"
    proc = start(clip, out, stats_path)
    wait_until(proc, lambda: MOMENTS["mid_run"](proc, out))
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=WAIT_S)
    assert proc.returncode in (0, EXIT_HARD_STOP)  # 0 only if the drain beat the second signal
    final = out if proc.returncode == 0 else part_of(out)
    assert media.count_frames(final) >= 1


@pytest.mark.slow
def test_sigkill_leaves_a_part_that_decodes_to_the_last_fragment(tmp_path: Path, clip: Path) -> None:
    out, stats_path = tmp_path / "out.mp4", tmp_path / "stats.json"
    proc = start(clip, out, stats_path)
    wait_until(proc, lambda: MOMENTS["mid_run"](proc, out))
    proc.kill()
    proc.communicate(timeout=WAIT_S)
    assert proc.returncode == -signal.SIGKILL
    assert part_of(out).exists() and not out.exists() and not stats_path.exists()
    probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                            "stream=nb_read_frames", "-of", "csv=p=0", str(part_of(out))],
                           check=False, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert probe.returncode == 0
    frames = int(probe.stdout.strip())
    assert frames >= 10 and media.count_frames(part_of(out)) == frames  # 0.4 s fragments: >= one full fragment
