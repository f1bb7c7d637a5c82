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


def test_probe_says_why_in_one_line_when_the_device_cannot_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever this machine has: a device that fails to open gives one line naming the error (the GPU case,
    where the probe must return None, is test_nvdec_really_decodes_on_the_gpu)."""
    import av

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise av.error.ExternalError(1, "Operation not permitted\nsecond line")

    monkeypatch.setattr(hwdec, "hwdevices_available", lambda: ["cuda"])
    monkeypatch.setattr(av.CodecContext, "create", refuse)
    reason = hwdec.probe("cuda")
    assert reason is not None and reason.startswith("no usable cuda device (ExternalError: ")
    assert "Operation not permitted" in reason


def test_pyav_without_hwaccel_is_a_reason_not_an_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyAV < 14 has no av.codec.hwaccel: importing stream.hwdec works, the probe says why."""

    def missing() -> list[str]:
        raise ImportError("No module named 'av.codec.hwaccel'")

    monkeypatch.setattr(hwdec, "hwdevices_available", missing)
    reason = hwdec.probe("cuda")
    assert reason is not None and reason.endswith("has no hardware decoding (needs PyAV >= 14)")
    assert hwdec.resolve("auto") is None


def test_hwaccel_is_imported_lazily() -> None:
    """No module-level import of av.codec.hwaccel (PyAV >= 14) in the inputs: PyAV 18 imports it inside
    ``import av`` anyway, so this reads the source instead of sys.modules."""
    import ast

    root = Path(__file__).resolve().parents[2] / "stream"
    for name in ("hwdec.py", "pyav_input.py"):
        tree = ast.parse((root / name).read_text())
        top = [n for n in tree.body if isinstance(n, ast.ImportFrom | ast.Import)]
        modules = [n.module if isinstance(n, ast.ImportFrom) else a.name for n in top
                   for a in (n.names if isinstance(n, ast.Import) else [None])]  # fmt: skip
        assert not any(m and m.startswith("av.codec") for m in modules), (name, modules)


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


@pytest.fixture
def h264_clip(tmp_path: Path) -> Path:
    """A 640x360 H.264 clip made with PyAV (no ffmpeg binary on the GPU machine)."""
    import av

    path = tmp_path / "nvdec.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        ramp = np.linspace(0, 255, 640, dtype=np.float32)[None, :, None]
        for i in range(30):
            image = np.clip(ramp + 4 * i + np.zeros((360, 1, 3), np.float32), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_decoded_on_gpu_needs_an_hwaccel_context_and_a_transfer_format() -> None:
    class Context:
        def __init__(self, is_hwaccel: bool) -> None:
            self.is_hwaccel = is_hwaccel

    class Frame:
        def __init__(self, name: str) -> None:
            self.format = type("Format", (), {"name": name})()

    assert hwdec.decoded_on_gpu(Context(True), Frame("nv12"))
    assert not hwdec.decoded_on_gpu(Context(True), Frame("yuv420p"))  # the software fallback's frames
    assert not hwdec.decoded_on_gpu(Context(False), Frame("nv12"))


@pytest.mark.gpu
def test_nvdec_really_decodes_on_the_gpu(h264_clip: Path, caplog: pytest.LogCaptureFixture) -> None:
    """On a CUDA machine: the probe finds NVDEC, the decoder context is hardware accelerated and its frames
    come from the GPU (NVDEC's nv12, not the software decoder's yuv420p), the input says so, and the RGB
    frames equal software decoding within rounding."""
    import av

    reason = hwdec.probe("cuda")
    assert reason is None, f"NVDEC unusable on this GPU machine: {reason}"
    hwaccel = hwdec.resolve("cuda")
    assert hwaccel is not None
    with av.open(str(h264_clip), hwaccel=hwaccel) as container:
        stream = container.streams.video[0]
        frame = next(container.decode(stream))
        assert stream.codec_context.is_hwaccel and frame.format.name == "nv12"
        assert hwdec.decoded_on_gpu(stream.codec_context, frame)
    caplog.set_level(logging.INFO, logger="stream.pyav_input")
    with open_source(h264_clip, SourceOptions(hwdec="cuda")) as src:
        assert src.info.pix_fmt == "nv12"
        gpu = [f.data for _, f in zip(range(30), src, strict=False)]
    assert any("with NVDEC" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    cpu = _frames(h264_clip, "none", 30)
    assert len(gpu) == len(cpu) == 30
    worst = max(int(np.abs(g.astype(np.int16) - c.astype(np.int16)).max()) for g, c in zip(gpu, cpu, strict=True))
    assert worst <= 2, worst
