"""Hardware decoding (stream.hwdec): the choice, the probe, the CPU fallback, and NVDEC frames on a GPU."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from stream import hwdec
from stream.source import SourceOptions, open_source


@pytest.fixture(autouse=True)
def fresh_probe() -> Iterator[None]:
    """The probe and the choice are cached per process; each test starts from scratch."""
    hwdec.probe.cache_clear()
    hwdec.resolve.cache_clear()
    yield
    hwdec.probe.cache_clear()
    hwdec.resolve.cache_clear()


def _frames(path: Path, choice: str, count: int) -> list[np.ndarray]:
    with open_source(path, SourceOptions(hwdec=choice)) as src:
        return [frame.data for _, frame in zip(range(count), src, strict=False)]


def test_none_never_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hwdec, "probe", lambda *_: pytest.fail("probed"))
    assert hwdec.resolve("none") is None


def test_unknown_choice_is_refused() -> None:
    with pytest.raises(ValueError, match="hwdec must be one of none, auto, cuda"):
        SourceOptions(hwdec="vdpau")
    with pytest.raises(ValueError, match="hwdec must be one of"):
        hwdec.resolve("vdpau")


def test_probe_says_why_in_one_line_or_nothing() -> None:
    reason = hwdec.probe("cuda")
    assert reason is None or (reason.startswith(("no usable cuda device", "this FFmpeg build")) and "\n" not in reason)


def test_build_without_the_device_type_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hwdec, "hwdevices_available", lambda: ["vaapi"])
    assert hwdec.probe("cuda") == "this FFmpeg build has no cuda device support"


@pytest.mark.parametrize(("choice", "level"), [("auto", logging.INFO), ("cuda", logging.WARNING)])
def test_unusable_gpu_falls_back_to_the_cpu_saying_why_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, clips: dict[str, Path], choice: str, level: int
) -> None:
    monkeypatch.setattr(hwdec, "probe", lambda *_: "no usable cuda device (PermissionError: [Errno 1])")
    caplog.set_level(logging.INFO, logger="stream.hwdec")
    frames = _frames(clips["bikes"], choice, 3)
    again = _frames(clips["bikes"], choice, 3)  # a second source (reconnect, next file): no second message
    reference = _frames(clips["bikes"], "none", 3)
    assert all(np.array_equal(a, b) for a, b in zip(frames + again, reference + reference, strict=True))
    said = [r for r in caplog.records if r.name == "stream.hwdec"]
    assert len(said) == 1 and said[0].levelno == level
    assert said[0].getMessage() == "hardware decoding off: no usable cuda device (PermissionError: [Errno 1]); decoding on the CPU"


@pytest.mark.gpu
def test_nvdec_frames_match_software_decoding(clips: dict[str, Path]) -> None:
    """On a CUDA machine: NVDEC is used, and its frames are the software decoder's within rounding."""
    if hwdec.probe("cuda") is not None:
        pytest.fail(f"NVDEC unusable on this GPU machine: {hwdec.probe('cuda')}")
    assert hwdec.resolve("cuda") is not None
    gpu, cpu = _frames(clips["bikes"], "cuda", 30), _frames(clips["bikes"], "none", 30)
    assert len(gpu) == len(cpu) == 30
    worst = max(int(np.abs(g.astype(np.int16) - c.astype(np.int16)).max()) for g, c in zip(gpu, cpu, strict=True))
    assert worst <= 2, worst
