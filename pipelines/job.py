"""One dehazing job as the CLI runs it: open the source and the sink, build the dehazer, run, finalize.

``cliphaze dehaze`` and ``cliphaze demo`` describe a run as a :class:`DehazeJob`; :func:`run_job` wires
the stream/ source and sink (publish outputs that reopen with backoff, gap filling for live cameras),
the progress bar or status lines, the Prometheus endpoint and the density log around
:func:`pipelines.runner.run`. Its log lines are user-facing notes (the CLI shows this logger at INFO).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

logger = logging.getLogger(__name__)

STATUS_EVERY_S = 10.0  # live sources: seconds between status log lines


class Progress:
    """tqdm bar for files on a terminal, periodic log lines for live sources, silence otherwise."""

    def __init__(self, total: int | None, *, use_bar: bool, live: bool) -> None:
        self._bar: Any = None
        self._live = live
        self._last_status = time.perf_counter()
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="frame", dynamic_ncols=True, file=sys.stderr, leave=False)

    def update(self, event: Any) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(fps=f"{event.fps:.1f}", drops=event.frames_dropped, refresh=False)
        elif self._live and time.perf_counter() - self._last_status >= STATUS_EVERY_S:
            self._last_status = time.perf_counter()
            logger.info(
                "status: %d frames out, %.1f fps, %.0f ms latency, %d dropped",
                event.frames_out, event.fps, event.latency_ms, event.frames_dropped,
            )  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class DehazeJob:
    """Everything ``dehaze`` and ``demo`` need to run one source into one sink."""

    source: str
    output: str
    output_format: str | None
    pipeline: Any  # PipelineConfig
    encoder: Any  # EncoderConfig
    stats_path: Path | None
    metrics_port: int | None
    metrics_addr: str
    density_log: Path | None
    fill_gaps: bool = True  # live sources: repeat the last frame while the camera is away (output keeps its timing)
    hwdec: str = "none"  # "none" | "auto" | "cuda": NVDEC decoding (stream.hwdec), CPU fallback




def run_job(job: DehazeJob, plan: Any, stop: threading.Event) -> tuple[Any, Any]:
    """Open source and sink, build the dehazer, run, finalize. Returns (RunStats, dehazer).

    ``plan`` builds the dehazer (``plan.create()``) and says once which one it chose (``plan.choice.note``);
    it is created after the source opened and before the sink, so a model that fails to load leaves no
    empty output behind.

    ``stop`` is set by the signal handlers (installed by the command before anything heavy loads): a signal
    at any moment lets the run drain, finalizes the output and exits 0.
    """
    import dataclasses

    from pipelines.gap_filler import GapFiller
    from pipelines.prometheus import MetricsServer
    from pipelines.runner import run
    from stream.republish import PUBLISH_KINDS, RepublishingSink
    from stream.sink import open_sink
    from stream.source import SourceOptions, open_source
    from stream.uri import parse_sink, redact

    with contextlib.ExitStack() as stack:
        source = stack.enter_context(open_source(job.source, SourceOptions(hwdec=job.hwdec)))
        info = source.info
        out_info = dataclasses.replace(info, width=info.width * 2) if job.pipeline.side_by_side else info
        dehazer = plan.create()  # before the sink: a model that fails to load leaves no empty output behind
        sink_spec = parse_sink(job.output, job.output_format)

        def open_output() -> Any:
            return open_sink(sink_spec, out_info, job.encoder, audio_from=info)

        # a publish target that goes away (server restart) is reopened with backoff instead of ending the run
        sink = RepublishingSink(open_output) if sink_spec.kind in PUBLISH_KINDS else open_output()
        if info.is_live and job.fill_gaps:
            sink = GapFiller(sink, out_info)  # closes the wrapped sink too
        stack.callback(sink.close)  # flush + trailer + rename, also after an error
        logger.info("%s", plan.choice.note)  # after the output opened: a bad output stays one error line
        to_stdout = job.output == "-"
        total = job.pipeline.max_frames or info.frame_count
        progress = Progress(total, use_bar=sys.stderr.isatty() and not to_stdout and not info.is_live,
                             live=info.is_live)  # fmt: skip
        stack.callback(progress.close)
        callbacks: list[Callable[[Any], None]] = [progress.update]
        if job.metrics_port is not None:
            metrics = MetricsServer(job.metrics_port, job.metrics_addr, reconnects=lambda: source.stats.reconnects)
            stack.callback(metrics.close)
            callbacks.append(metrics.update)
        if job.density_log is not None:
            job.density_log.parent.mkdir(parents=True, exist_ok=True)
            density_file: TextIO = stack.enter_context(job.density_log.open("w"))

            def log_density(event: Any) -> None:
                if event.density is not None:
                    record = {"pts": event.pts, "time_s": event.time_s, "density": round(event.density, 6)}
                    density_file.write(json.dumps(record) + "\n")

            callbacks.append(log_density)

        def on_frame(event: Any) -> None:
            for callback in callbacks:
                callback(event)

        logger.info("dehazing %s -> %s (%dx%d, %s)", redact(job.source), redact(job.output), info.width,
                    info.height, dehazer.name)  # fmt: skip
        stats = run(source, sink, dehazer, job.pipeline, stop_event=stop, on_frame=on_frame, on_end=sink.write_end)
    if job.stats_path is not None:
        write_json(job.stats_path, stats.to_dict())
    logger.info(
        "%d frames in %.1f s (%.1f fps, latency p50 %.0f ms, p95 %.0f ms, %d dropped)%s",
        stats.frames_out, stats.wall_s, stats.fps, stats.latency_ms_p50, stats.latency_ms_p95, stats.frames_dropped,
        " (stopped early)" if stats.stopped_early else "",
    )  # fmt: skip
    if stats.corrupt_packets:
        logger.warning("%d corrupt video packets were skipped", stats.corrupt_packets)
    return stats, dehazer
