"""Media, weights and process helpers of the reliability tests (generated into tmp_path, never downloaded)."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import av
import numpy as np

REPO = Path(__file__).resolve().parents[2]
FFMPEG = "ffmpeg"
RATE = 25
SUBPROCESS_TIMEOUT_S = 120


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y", *args], check=True,
                   timeout=SUBPROCESS_TIMEOUT_S)  # fmt: skip


def make_clip(path: Path, seconds: float = 1.0, size: str = "96x64", extra: tuple[str, ...] = (),
              source: str = "testsrc") -> Path:  # fmt: skip
    """H.264 test pattern (non-fragmented MP4 when ``path`` ends in .mp4: its index sits at the end)."""
    ffmpeg("-f", "lavfi", "-i", f"{source}=size={size}:rate={RATE}", "-t", str(seconds), "-c:v", "libx264",
           "-pix_fmt", "yuv420p", *extra, str(path))  # fmt: skip
    return path


def cut_index(good_mp4: Path, path: Path) -> Path:
    """The MP4 without its trailing index (moov): what a crashed recorder leaves."""
    data = good_mp4.read_bytes()
    moov = data.rfind(b"moov")
    assert moov > data.find(b"mdat") > 0, "expected the moov atom after mdat"
    path.write_bytes(data[: moov - 4])
    return path


def make_audio_only(path: Path) -> Path:
    ffmpeg("-f", "lavfi", "-i", "sine=sample_rate=48000", "-t", "0.5", "-c:a", "aac", str(path))
    return path


def make_zero_frames(path: Path) -> Path:
    """A Matroska file with an H.264 video stream and no frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        container.start_encoding()
    return path


def make_png(path: Path) -> Path:
    import cv2

    assert cv2.imwrite(str(path), np.full((64, 96, 3), 128, np.uint8))
    return path


def make_two_sizes(path: Path) -> Path:
    """MPEG-TS whose resolution changes from 96x64 to 128x80 half way (concatenated streams)."""
    first, second = path.with_suffix(".a.ts"), path.with_suffix(".b.ts")
    make_clip(first, 0.6, "96x64")
    make_clip(second, 0.6, "128x80")
    path.write_bytes(first.read_bytes() + second.read_bytes())
    return path


def corrupt_middle(ts: Path, path: Path, *, fraction: float = 0.5, span: int = 4000, seed: int = 0) -> Path:
    """Overwrite ``span`` bytes in the middle of an MPEG-TS with noise (sync bytes kept: packets survive)."""
    data = bytearray(ts.read_bytes())
    rng = np.random.default_rng(seed)
    start = int(len(data) * fraction) // 188 * 188
    for offset in range(start, min(start + span, len(data)), 188):
        data[offset + 4 : offset + 188] = rng.integers(0, 256, 184, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


class _Payload:
    """Pickles into a call that creates ``marker``: loading it must never run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.mkdir, (str(self.marker),))


def make_pickle_weights(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    return path


def load_pipeline_fakes() -> ModuleType:
    """tests/pipelines/pipeline_fakes.py (its tiny-bundle builder), loaded by path."""
    spec = importlib.util.spec_from_file_location("pipeline_fakes", REPO / "tests" / "pipelines" / "pipeline_fakes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def rewrite_bundle(bundle: Path, path: Path, *, net_variant: str) -> Path:
    """The bundle's tensors with another variant's network config in the metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from cliphaze.config import get_config

    with safe_open(str(bundle), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    metadata["net_config"] = json.dumps(get_config(net_variant).to_dict(), sort_keys=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def count_frames(path: Path) -> int:
    """Decodable video frames; a damaged packet (e.g. a cut last fragment) is skipped, as a player would."""
    frames = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            try:
                frames += len(packet.decode())
            except av.error.InvalidDataError:
                continue
    return frames


def frame_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sorted(float(f.pts * f.time_base) for f in container.decode(stream) if f.pts is not None)


def cli_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``python -m cli ARGS`` in the repository root.

    The pipes are unbuffered (``bufsize=0``) so ``select`` on them is truthful: with a buffered reader, one
    ``readline`` can pull several lines into Python's buffer and the next ``select`` then waits for output
    that already arrived (the test then acted seconds late, after the run had finished).
    """
    return subprocess.Popen([sys.executable, "-m", "cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            bufsize=0, cwd=REPO, env={**os.environ, **(env or {})})  # fmt: skip
