"""``cliphaze bench``: the benchmarks that print numbers (scan kernels, video I/O, pipeline, real time).

Registered lazily by cli.py; heavy imports stay inside each command. Speed targets live here, as printed
numbers and ratios measured in one run, never in timed tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from cliphaze.run_options import COMPILE_MODES, PRECISION_NAMES
from pipelines.job import write_json


@click.group()
def bench() -> None:
    """Benchmarks that print numbers (scan kernels, video I/O, the whole pipeline)."""


@bench.command("scan")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cpu: SS2D's scan at 128x128, fp32. "
                   "cuda: the 960x540 stage (L = 129,600, 4x96 channels), bf16.")  # fmt: skip
def bench_scan(device: str) -> None:
    """Selective-scan backends, and SS2D's fused four-direction scan: forward and forward+backward time."""
    from pipelines.bench.scan import (
        CUDA_CONFIG,
        ScanBenchConfig,
        format_cross_scan_report,
        format_scan_report,
        run_cross_scan_benchmark,
        run_scan_benchmark,
    )

    config = CUDA_CONFIG if device == "cuda" else ScanBenchConfig()
    click.echo(format_scan_report(config, run_scan_benchmark(config)))
    click.echo(format_cross_scan_report(run_cross_scan_benchmark(config)))


@bench.command("io")
def bench_io() -> None:
    """Decode and encode throughput of the stream package."""
    from pipelines.bench.io import run_io_benchmark

    click.echo(json.dumps(run_io_benchmark(), indent=2, sort_keys=True, default=str))


@bench.command("pipeline")
@click.option("--seconds", type=float, default=4.0, show_default=True, help="Length of the benchmark clip.")
@click.option("--variants", default="cliphaze-tiny,cliphaze-t", show_default=True,
              help="CLIPHaze variants for (b) and (c), random weights (speed only); empty to skip.")  # fmt: skip
@click.option("--frames", type=int, default=50, show_default=True, help="Frames timed for none and dcp.")
@click.option("--cliphaze-frames", type=int, default=8, show_default=True, help="Frames timed for CLIPHaze.")
@click.option("--cliphaze-scale", type=float, default=1.0, show_default=True,
              help="Network resolution factor for CLIPHaze variants (0.25: feasible on a CPU).")  # fmt: skip
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(0, None), default=0, show_default=True,
              help="torch CPU threads (0 = half the cores, as dehaze).")  # fmt: skip
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Also write the numbers.")
def bench_pipeline(seconds: float, variants: str, frames: int, cliphaze_frames: int, cliphaze_scale: float,
                   device: str, threads: int, json_path: Path | None) -> None:  # fmt: skip
    """(a) I/O overhead vs ffmpeg, (b) model vs pipeline fps, (c) guidance every 1 vs 8, (d) dcp fps."""
    import torch

    from pipelines.bench.pipeline import PipelineBenchConfig, run_pipeline_benchmark
    from pipelines.dehazers import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cpu":
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // 2))
    config = PipelineBenchConfig(seconds=seconds, variants=tuple(v for v in variants.split(",") if v),
                                 model_frames=frames, cliphaze_frames=cliphaze_frames,
                                 cliphaze_scale=cliphaze_scale)  # fmt: skip
    results = run_pipeline_benchmark(config, report=click.echo, device=str(resolved))
    if json_path is not None:
        write_json(json_path, results)


@bench.command("realtime")
@click.option("--variants", default="dcp,cliphaze-t", show_default=True,
              help="dcp, none and CLIPHaze variants (random weights: speed only).")  # fmt: skip
@click.option("--resolutions", default="720p,1080p,4k", show_default=True)
@click.option("--scales", default="1,0.5,0.25", show_default=True, help="Network scales (CLIPHaze only).")
@click.option("--frames", type=click.IntRange(1, None), default=4, show_default=True, help="Frames timed per cell.")
@click.option("--max-frame-s", type=float, default=4.0, show_default=True,
              help="Skip cells whose estimated seconds per frame exceed this (keeps a CPU run to minutes).")  # fmt: skip
@click.option("--guidance-every", type=click.IntRange(1, None), default=8, show_default=True)
@click.option("--precision", type=click.Choice(PRECISION_NAMES), default="fp32", show_default=True)
@click.option("--compile", "compile_mode", type=click.Choice(COMPILE_MODES),
              default="off", show_default=True)  # fmt: skip
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
              help="CLIPHaze on CUDA: replay the restore path from CUDA graphs (compile off).")
@click.option("--batch", type=click.IntRange(1, None), default=1, show_default=True)
@click.option("--streams", type=click.IntRange(1, None), default=1, show_default=True,
              help="Concurrent end-to-end runs sharing one dehazer.")  # fmt: skip
@click.option("--no-e2e", is_flag=True, help="Model-only numbers (skip the engine runs).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(0, None), default=0, show_default=True,
              help="torch CPU threads (0 = half the cores, as dehaze).")  # fmt: skip
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Also write the rows.")
def bench_realtime(variants: str, resolutions: str, scales: str, frames: int, max_frame_s: float,
                   guidance_every: int, precision: str, compile_mode: str, cuda_graphs: bool, batch: int,
                   streams: int, no_e2e: bool, device: str, threads: int, json_path: Path | None) -> None:  # fmt: skip
    """Variant x resolution x scale: model-only fps, end-to-end fps, latency p50/p95, guidance share."""
    import torch

    from pipelines.dehazers import resolve_device
    from pipelines.bench.realtime import RESOLUTIONS, RealtimeBenchConfig, run_realtime_benchmark

    resolved = resolve_device(device)
    if resolved.type == "cpu":
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // 2))
    names = tuple(r for r in resolutions.lower().split(",") if r)
    unknown = [r for r in names if r not in RESOLUTIONS]
    if unknown:
        raise click.UsageError(f"unknown resolution(s) {', '.join(unknown)}; choose from {', '.join(RESOLUTIONS)}")
    try:
        scale_values = tuple(float(s) for s in scales.split(",") if s)
    except ValueError as exc:
        raise click.UsageError(f"--scales must be numbers, got {scales!r}") from exc
    if not all(0.0 < s <= 1.0 for s in scale_values):
        raise click.UsageError(f"scales must be in (0, 1], got {scales}")
    config = RealtimeBenchConfig(variants=tuple(v for v in variants.split(",") if v), resolutions=names,
                                 scales=scale_values, frames=frames, guidance_every=guidance_every,
                                 max_frame_s=max_frame_s, precision=precision, compile_mode=compile_mode,
                                 cuda_graphs=cuda_graphs, batch=batch, streams=streams,
                                 end_to_end=not no_e2e)  # fmt: skip
    click.echo(f"device {resolved}, torch threads {torch.get_num_threads()}; CLIPHaze weights are random (speed only)")
    results = run_realtime_benchmark(config, device=str(resolved), report=click.echo)
    skipped = sum(1 for row in results["rows"] if "skipped" in row)
    if skipped:
        click.echo(f"{skipped} cell(s) skipped: estimated over --max-frame-s {max_frame_s:g} s per frame")
    if json_path is not None:
        write_json(json_path, results)


# `bench serve` lives with the serving engine; registered here so that it sits in the same group.
from pipelines.serve.bench_command import bench_serve  # noqa: E402 - the group must exist first

bench.add_command(bench_serve)
