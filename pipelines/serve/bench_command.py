"""``cliphaze bench serve``: the click command (registered in the ``bench`` group by pipelines/bench/commands.py).

Heavy imports stay inside the command; the benchmark itself is :mod:`pipelines.serve.bench`.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipelines.job import write_json


@click.command("serve")
@click.option("--model", type=click.Choice(["dcp", "none", "cliphaze"]), default="dcp", show_default=True)
@click.option("--weights", type=click.Path(path_type=Path, dir_okay=False, exists=True), help="CLIPHaze bundle.")
@click.option("--resolution", default="640x360", show_default=True, help="Camera size WIDTHxHEIGHT.")
@click.option("--fps", type=click.IntRange(1, 240), default=25, show_default=True, help="Camera frame rate.")
@click.option("--seconds", type=click.FloatRange(0.5, 600), default=8.0, show_default=True,
              help="Length of each camera's clip.")  # fmt: skip
@click.option("--scale", type=click.FloatRange(0.01, 1.0), default=1.0, show_default=True)
@click.option("--max-cameras", type=click.IntRange(1, 256), default=16, show_default=True)
@click.option("--preset", default="veryfast", show_default=True, help="Encoder preset of every camera.")
@click.option("--max-batch", type=click.IntRange(1, None), default=8, show_default=True)
@click.option("--max-wait-ms", type=click.FloatRange(0, 1000), default=5.0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--threads", type=click.IntRange(0, None), default=0, show_default=True,
              help="torch CPU threads (0 = half the cores, as serve).")  # fmt: skip
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Also write the rows.")
def bench_serve(model: str, weights: Path | None, resolution: str, fps: int, seconds: float, scale: float,
                max_cameras: int, preset: str, max_batch: int, max_wait_ms: float, device: str, precision: str,
                threads: int,
                json_path: Path | None) -> None:  # fmt: skip
    """How many cameras one `cliphaze serve` process keeps in real time (N cameras, N = 1, 2, ...)."""
    import logging

    from pipelines.serve.batcher import BatchConfig
    from pipelines.serve.bench import ServeBenchConfig, run_serve_benchmark
    from pipelines.serve.engine import ServeOptions

    try:
        width, height = (int(v) for v in resolution.lower().split("x"))
    except ValueError as exc:
        raise click.UsageError(f"--resolution must be WIDTHxHEIGHT, got {resolution!r}") from exc
    batch = BatchConfig(max_batch=max_batch, max_wait_ms=max_wait_ms)
    config = ServeBenchConfig(model=model, weights=weights, width=width, height=height, fps=fps, seconds=seconds,
                              scale=scale, max_cameras=max_cameras, preset=preset, batch=batch)  # fmt: skip
    options = ServeOptions(batch=batch, device=device, precision=precision, threads=threads, http_port=None)
    for name in ("pipelines.serve.engine", "pipelines.serve.camera"):  # the rows, not every camera's start and stop
        logging.getLogger(name).setLevel(logging.WARNING)
    results = run_serve_benchmark(config, options, report=click.echo)
    if json_path is not None:
        write_json(json_path, results)
