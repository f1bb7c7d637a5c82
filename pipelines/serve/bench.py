"""``cliphaze bench serve``: how many cameras one process keeps in real time.

The benchmark runs the real serving engine (per-camera decode and encode threads, one shared dehazer
batched across cameras) on N identical cameras, N = 1, 2, 3, ... Each camera is an H.264 file at the
camera's size and rate, read as fast as the engine takes it: a camera is kept in real time when it is
served at least at its frame rate (frames / wall time, the wall time counted from the start of all cameras
to the end of the last one, so opening costs count too). The answer is the largest N at which every
camera reaches that rate. Live cameras add no decode work beyond this; what they add is a queue that drops
the oldest frame when the engine falls behind (docs/serve.md).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.serve.batcher import BatchConfig
from pipelines.serve.config import MODELS, CameraConfig, ServeConfig, ServeConfigError
from pipelines.serve.engine import ServeEngine, ServeOptions, wait_until

logger = logging.getLogger(__name__)

RUN_TIMEOUT_S = 600.0  # one N; past it the run counts as not real time
WARMUP_FRAMES = 10  # a first short run loads kernels (numba cache, CUDA context) before anything is timed


@dataclass(frozen=True)
class ServeBenchConfig:
    """What is measured."""

    model: str = "dcp"  # dcp | none | cliphaze (the shipped bundle unless weights are given)
    weights: Path | None = None  # CLIPHaze bundle
    width: int = 640  # camera size, px
    height: int = 360
    fps: int = 25  # camera frame rate: the real-time bar
    seconds: float = 8.0  # length of each camera's clip
    scale: float = 1.0  # network resolution factor
    max_cameras: int = 16  # stop searching here
    codec: str = "libx264"  # output encoder, as a camera's default
    preset: str = "veryfast"  # encoder preset, as a camera's default (ultrafast: less CPU, more bits)
    batch: BatchConfig = BatchConfig()  # cross-camera batching

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ServeConfigError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ServeConfigError(f"camera size must be even and at least 16x16, got {self.width}x{self.height}")
        if self.fps < 1 or self.seconds <= 0 or self.max_cameras < 1:
            raise ServeConfigError("fps, seconds and max cameras must be positive")


def make_camera_clip(path: Path, width: int, height: int, fps: int, frames: int) -> Path:
    """A hazy moving scene as H.264 (CRF 18): gradients, edges and noise under a uniform veil."""
    import av

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        stream.codec_context.time_base = Fraction(1, fps)
        for t in range(frames):
            scene = np.stack([(x + 4 * t) % 256, (y + 2 * t) % 256, ((x + y) / 2 + 3 * t) % 256], axis=-1)
            scene += ((x // 40 + y // 40 + t // 10) % 2)[..., None] * 60.0  # edges for the guided filter
            hazy = 0.55 * scene + 0.45 * 230.0 + rng.normal(0.0, 3.0, scene.shape)
            frame = av.VideoFrame.from_ndarray(np.clip(hazy, 0, 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def run_cameras(engine_options: ServeOptions, bench: ServeBenchConfig, clip: Path, folder: Path,
                cameras: int) -> dict[str, Any]:  # fmt: skip
    """Serve ``cameras`` copies of ``clip`` to the end; per-camera rate and latency."""
    configs = tuple(CameraConfig(name=f"cam{i}", source=str(clip), sink=str(folder / f"cam{i}_{cameras}.mkv"),
                                 model=bench.model, weights=bench.weights, scale=bench.scale, codec=bench.codec,
                                 preset=bench.preset)
                    for i in range(cameras))  # fmt: skip
    engine = ServeEngine(engine_options)
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        engine.apply(ServeConfig(configs))
        done = wait_until(engine.all_finished, RUN_TIMEOUT_S, poll_s=0.05)
        wall_s = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
        status = engine.cameras()
        batchers = engine.batchers()
    finally:
        engine.stop()
    frames = [c["frames_out"] for c in status]
    failed = [c["name"] for c in status if c["state"] != "finished"]
    per_camera = min(frames) / wall_s if frames else 0.0
    calls = sum(b["calls"] for b in batchers)
    return {
        "cameras": cameras,
        "wall_s": round(wall_s, 2),
        "frames": sum(frames),
        "aggregate_fps": round(sum(frames) / wall_s, 1),
        "per_camera_fps": round(per_camera, 1),
        "latency_ms_p95": max((c["latency_ms_p95"] for c in status), default=0.0),
        "mean_batch": round(sum(b["frames"] for b in batchers) / calls, 2) if calls else 0.0,
        # CPU seconds of this process (every thread) per frame: far less sensitive to other processes than wall time
        "cpu_ms_per_frame": round(cpu_s * 1000.0 / max(1, sum(frames)), 2),
        "real_time": done and not failed and per_camera >= bench.fps,
    }


def run_serve_benchmark(bench: ServeBenchConfig, options: ServeOptions,
                        report: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Search the largest camera count served in real time. Returns the rows and the answer."""
    frames = max(1, round(bench.seconds * bench.fps))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cliphaze-bench-serve-") as tmp:
        folder = Path(tmp)
        clip = make_camera_clip(folder / "camera.mp4", bench.width, bench.height, bench.fps, frames)
        warm = make_camera_clip(folder / "warm.mp4", bench.width, bench.height, bench.fps, WARMUP_FRAMES)
        run_cameras(options, bench, warm, folder, 1)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        report(f"{os.cpu_count()} CPU cores, load average {load:.1f} before the runs (other processes slow it down)")
        report(f"{bench.model} at {bench.width}x{bench.height} {bench.fps} fps, scale {bench.scale:g}, {frames} "
               f"frames per camera, max batch {bench.batch.max_batch}, {bench.codec} {bench.preset}")
        for cameras in range(1, bench.max_cameras + 1):
            row = run_cameras(options, bench, clip, folder, cameras)
            rows.append(row)
            report(f"{cameras:3d} camera(s): {row['per_camera_fps']:7.1f} fps each, {row['aggregate_fps']:7.1f} "
                   f"in all, latency p95 {row['latency_ms_p95']:6.0f} ms, mean batch {row['mean_batch']:.2f}, "
                   f"CPU {row['cpu_ms_per_frame']:.1f} ms/frame"
                   f"{'' if row['real_time'] else '  < real time'}")  # fmt: skip
            if not row["real_time"]:
                break
    kept = max((r["cameras"] for r in rows if r["real_time"]), default=0)
    report(f"real time: {kept} camera(s) of {bench.width}x{bench.height} at {bench.fps} fps ({bench.model})")
    cheapest = min((r["cpu_ms_per_frame"] for r in rows if r["cpu_ms_per_frame"] > 0), default=0.0)
    idle_estimate = int((os.cpu_count() or 1) * 1000.0 / (cheapest * bench.fps)) if cheapest else 0
    from pipelines.dehazers import resolve_device

    if cheapest and resolve_device(options.device).type == "cpu":  # on a GPU, host CPU time bounds nothing useful
        report(f"CPU-time bound: {cheapest:.1f} ms of CPU per frame -> at most {idle_estimate} camera(s) on "
               f"{os.cpu_count()} idle cores (an upper bound: it assumes every core is ours)")  # fmt: skip
    return {"config": {k: str(v) for k, v in asdict(bench).items()}, "rows": rows, "cameras_real_time": kept,
            "load_average": load, "cpu_count": os.cpu_count(), "cpu_bound_cameras": idle_estimate}
