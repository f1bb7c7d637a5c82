#!/usr/bin/env python
"""Soak test: RTSP camera -> cliphaze -> file (or RTSP publish) for a long time, watching for leaks and drift.

Starts the GStreamer RTSP test camera (tests/stream/rtsp_server.py, Debian's python3-gi) unless
``--camera URL`` is given, runs the dehazing pipeline in this process for ``--duration`` seconds and
samples, every ``--sample-every`` seconds: RSS (floor and peak), GPU memory (when CUDA is used), queue depths (source and
the five stage queues), frames in/out/dropped, reconnects and per-frame latency (median of the frames
written since the previous sample).

After ``--warmup`` seconds it fits robust (Theil-Sen) slopes and fails (exit 1) when
  - RSS (the floor of each sample interval, polled every 0.1 s) grows faster than ``--max-rss-mb-per-min``
    (1 MB/min), or
  - latency drifts upward: the fitted rise over the measured window exceeds both
    ``--max-latency-rise-ms`` and ``--max-latency-rise-frac`` x the median latency, or
  - the output stalls (fewer than ``--min-fps-frac`` x the camera rate written).

Prints one line per sample and a JSON summary (also written to ``--json``). Examples:
    python scripts/soak.py --duration 1800 --json runs/soak_30min.json
    python scripts/soak.py --duration 60 --sample-every 2 --warmup 20   # the CI variant
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SERVER_SCRIPT = REPO / "tests" / "stream" / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's interpreter, the one with python3-gi
SERVER_START_S = 15.0
SERVER_STOP_S = 5.0
BYTES_PER_MB = 1024 * 1024
S_PER_MIN = 60.0
# RSS is polled this often and each sample keeps the interval's floor: transient frame buffers make the
# instantaneous value jitter by +-2 MB, while a leak raises the floor.
RSS_POLL_S = 0.1
RUN_JOIN_S = 30.0  # after the stop request, how long the pipeline may take to drain

logger = logging.getLogger("soak")


@dataclass(frozen=True)
class Sample:
    """One observation of the running pipeline."""

    t_s: float  # seconds since the run started
    rss_mb: float  # floor (minimum) of this process's resident set size over the interval, polled every RSS_POLL_S
    rss_peak_mb: float  # maximum over the same polls
    gpu_mb: float | None  # torch.cuda.memory_allocated, None without CUDA
    frames_in: int
    frames_out: int
    frames_dropped: int
    reconnects: int
    source_queue: int  # frames waiting inside the source
    stage_queues: tuple[int, ...]  # items waiting in each inter-stage queue, upstream first
    latency_ms: float | None  # median latency of the frames written since the previous sample
    fps: float  # frames written per second since the previous sample


def rss_mb() -> float:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def theil_sen_slope(x: list[float], y: list[float]) -> float:
    """Median of the pairwise slopes (robust to outliers); 0 with fewer than 2 points."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    i, j = np.triu_indices(len(xs), k=1)
    dx = xs[j] - xs[i]
    keep = dx > 0
    if not keep.any():
        return 0.0
    return float(np.median((ys[j] - ys[i])[keep] / dx[keep]))


def free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port pair")


def start_camera() -> tuple[subprocess.Popen[str], str]:
    """The GStreamer RTSP test camera (160x120, 25 fps H.264) on a free local port."""
    if not os.path.exists(SYSTEM_PYTHON):
        raise SystemExit(f"{SYSTEM_PYTHON} (with python3-gi) is needed for the test camera; pass --camera URL")
    port = free_port_pair()
    proc = subprocess.Popen([SYSTEM_PYTHON, str(SERVER_SCRIPT), str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], SERVER_START_S)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("READY"):
        stop_process(proc)
        raise SystemExit(f"RTSP test camera did not start: {line!r}")
    return proc, f"rtsp://127.0.0.1:{port}/cam"


def stop_process(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(SERVER_STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(SERVER_STOP_S)
    if proc.stdout is not None:
        proc.stdout.close()


class Recorder:
    """``on_frame`` callback: keeps the latencies since the last sample and the latest counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self.last: Any = None  # the latest pipelines.stats.FrameDone

    def __call__(self, event: Any) -> None:
        with self._lock:
            self._latencies.append(event.latency_ms)
            self.last = event

    def take(self) -> tuple[list[float], Any]:
        with self._lock:
            latencies, self._latencies = self._latencies, []
            return latencies, self.last


def analyse(samples: list[Sample], args: argparse.Namespace, camera_fps: float) -> dict[str, Any]:
    """Slopes after the warm-up and the pass/fail verdicts."""
    steady = [s for s in samples if s.t_s >= args.warmup]
    with_latency = [s for s in steady if s.latency_ms is not None]
    minutes = [s.t_s / S_PER_MIN for s in steady]
    rss_slope = theil_sen_slope(minutes, [s.rss_mb for s in steady])
    lat_slope = theil_sen_slope([s.t_s / S_PER_MIN for s in with_latency], [s.latency_ms for s in with_latency])
    window_min = (steady[-1].t_s - steady[0].t_s) / S_PER_MIN if len(steady) > 1 else 0.0
    median_latency = statistics.median(s.latency_ms for s in with_latency) if with_latency else 0.0
    latency_rise = lat_slope * window_min
    rise_limit = max(args.max_latency_rise_ms, args.max_latency_rise_frac * median_latency)
    out_fps = (
        (steady[-1].frames_out - steady[0].frames_out) / (steady[-1].t_s - steady[0].t_s) if len(steady) > 1 else 0.0
    )
    gpu = [s.gpu_mb for s in steady if s.gpu_mb is not None]
    latencies = [s.latency_ms for s in with_latency]
    latency_p95 = float(np.percentile(latencies, 95)) if latencies else None
    failures = []
    if len(steady) < 3:
        failures.append(f"only {len(steady)} samples after the warm-up: run longer or sample more often")
    if rss_slope > args.max_rss_mb_per_min:
        failures.append(f"RSS grows {rss_slope:.2f} MB/min (limit {args.max_rss_mb_per_min})")
    if latency_rise > rise_limit:
        failures.append(f"latency drifts up {latency_rise:.1f} ms over {window_min:.1f} min (limit {rise_limit:.1f})")
    if out_fps < args.min_fps_frac * camera_fps:
        failures.append(f"output {out_fps:.1f} fps < {args.min_fps_frac:g} x camera {camera_fps:g} fps")
    return {
        "ok": not failures,
        "failures": failures,
        "duration_s": samples[-1].t_s if samples else 0.0,
        "warmup_s": args.warmup,
        "samples": len(samples),
        "steady_samples": len(steady),
        "rss_mb_start": steady[0].rss_mb if steady else None,
        "rss_mb_end": steady[-1].rss_mb if steady else None,
        "rss_mb_max": max((s.rss_peak_mb for s in samples), default=None),
        "rss_slope_mb_per_min": rss_slope,
        "gpu_mb_max": max(gpu) if gpu else None,
        "gpu_slope_mb_per_min": theil_sen_slope(minutes, gpu) if gpu and len(gpu) == len(steady) else None,
        "latency_ms_median": median_latency,
        "latency_ms_p95_of_sample_medians": latency_p95,
        "latency_slope_ms_per_min": lat_slope,
        "latency_rise_ms": latency_rise,
        "output_fps": out_fps,
        "camera_fps": camera_fps,
        "frames_in": samples[-1].frames_in if samples else 0,
        "frames_out": samples[-1].frames_out if samples else 0,
        "frames_dropped": samples[-1].frames_dropped if samples else 0,
        "reconnects": samples[-1].reconnects if samples else 0,
        "max_stage_queue": max((max(s.stage_queues, default=0) for s in samples), default=0),
        "max_source_queue": max((s.source_queue for s in samples), default=0),
    }


def soak(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pipelines.config import PipelineConfig
    from pipelines.dehazers import choose_dehazer, create_dehazer, resolve_device
    from pipelines.gap_filler import GapFiller
    from pipelines.runner import run
    from stream.encoder import EncoderConfig
    from stream.sink import open_sink
    from stream.source import SourceOptions, open_source

    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    use_cuda = device.type == "cuda"
    camera_proc, camera = (None, args.camera) if args.camera else start_camera()
    tmp = None
    output = args.output
    if output is None:
        tmp = tempfile.TemporaryDirectory(prefix="cliphaze-soak-")
        output = str(Path(tmp.name) / "soak.mp4")
    samples: list[Sample] = []
    recorder = Recorder()
    stop = threading.Event()
    outcome: dict[str, Any] = {}
    try:
        source = open_source(camera, SourceOptions())
        assert source.info is not None
        camera_fps = float(source.info.fps or 25)
        dehazer = create_dehazer(choose_dehazer(args.model, args.weights), device)
        sink = GapFiller(open_sink(output, source.info, EncoderConfig(preset="ultrafast")), source.info)
        config = PipelineConfig()

        def body() -> None:
            try:
                outcome["stats"] = run(source, sink, dehazer, config, stop_event=stop, on_frame=recorder,
                                       on_end=sink.write_end)  # fmt: skip
            except BaseException as exc:  # noqa: BLE001 - thread boundary: reported by the main thread
                outcome["error"] = exc

        runner = threading.Thread(target=body, name="soak-run", daemon=True)
        started = time.monotonic()
        runner.start()
        previous_out, previous_t = 0, 0.0
        while runner.is_alive() and time.monotonic() - started < args.duration:
            polls = []
            interval_end = time.monotonic() + args.sample_every
            while runner.is_alive() and time.monotonic() < interval_end:
                polls.append(rss_mb())
                runner.join(min(RSS_POLL_S, max(0.0, interval_end - time.monotonic())))
            polls.append(rss_mb())
            t_s = time.monotonic() - started
            latencies, last = recorder.take()
            frames_out = last.frames_out if last else 0
            sample = Sample(
                t_s=t_s,
                rss_mb=min(polls),
                rss_peak_mb=max(polls),
                gpu_mb=torch.cuda.memory_allocated() / BYTES_PER_MB if use_cuda else None,
                frames_in=last.frames_in if last else 0,
                frames_out=frames_out,
                frames_dropped=last.frames_dropped if last else source.stats.drops,  # the events include the source's
                reconnects=source.stats.reconnects,
                source_queue=source.stats.queue_depth,
                stage_queues=tuple(last.queue_depths[1:]) if last else (),  # [0] is the source queue
                latency_ms=statistics.median(latencies) if latencies else None,
                fps=(frames_out - previous_out) / (t_s - previous_t) if t_s > previous_t else 0.0,
            )
            previous_out, previous_t = frames_out, t_s
            samples.append(sample)
            print(
                f"t={t_s:7.1f}s rss={sample.rss_mb:7.1f}/{sample.rss_peak_mb:.1f}MB out={sample.frames_out:6d} fps={sample.fps:5.1f} "
                f"lat={sample.latency_ms or 0:6.1f}ms drops={sample.frames_dropped} rec={sample.reconnects} "
                f"q={sample.source_queue}/{','.join(map(str, sample.stage_queues))}",
                flush=True,
            )
        stop.set()
        runner.join(RUN_JOIN_S)
        sink.close()
        source.close()
        if "error" in outcome:
            raise outcome["error"]
        summary = analyse(samples, args, camera_fps)
        summary["repeated_frames"] = sink.repeated
        summary["output"] = output if args.output else "(temporary, deleted)"
        summary["model"] = dehazer.name
        summary["device"] = str(device)
        summary["samples_detail"] = [asdict(s) for s in samples]
        return summary
    finally:
        if camera_proc is not None:
            stop_process(camera_proc)
        if tmp is not None:
            tmp.cleanup()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds to run")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds ignored by the slope checks")
    parser.add_argument("--camera", help="RTSP URL to pull (default: start the GStreamer test camera)")
    parser.add_argument("--output", help="file or publish URL (default: a temporary .mp4, deleted afterwards)")
    parser.add_argument("--model", default="dcp", choices=["dcp", "none", "cliphaze", "auto"])
    parser.add_argument("--weights", type=Path, help="CLIPHaze bundle for --model cliphaze")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-rss-mb-per-min", type=float, default=1.0)
    parser.add_argument("--max-latency-rise-ms", type=float, default=20.0)
    parser.add_argument("--max-latency-rise-frac", type=float, default=0.25)
    parser.add_argument("--min-fps-frac", type=float, default=0.5, help="output fps at least this x camera fps")
    parser.add_argument("--json", type=Path, help="write the summary (with every sample) here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    summary = soak(args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    brief = {k: v for k, v in summary.items() if k != "samples_detail"}
    print(json.dumps(brief, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
