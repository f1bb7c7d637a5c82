"""The ``cliphaze`` command: dehaze files, cameras and pipes; images; probe; demo; models; bench.

Exit codes: 0 success (also after a first SIGINT/SIGTERM, which drains and finalizes the output), 2 bad
usage or bad input (one line, no traceback), 1 runtime failure (one line; ``-v`` adds the traceback to
the log). torch and the model code are imported inside commands, so ``cliphaze --help`` is instant.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.resources
import importlib.util
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlsplit, urlunsplit

import click

logger = logging.getLogger(__name__)

EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2
EXIT_HARD_STOP = 130  # second signal: leave at once
CRF_MIN, CRF_MAX = 1, 51  # x264/x265 constant-rate factor; 0 (lossless) needs High 4:4:4, the sink encodes High
STATUS_EVERY_S = 10.0  # live sources: seconds between status log lines
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEMO_OUTPUT = "cliphaze_demo.mp4"
SAMPLE_CLIP = "sample_hazy.mp4"
RTSP_SCHEMES = ("rtsp", "rtsps")
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
# Lazily registered commands from other packages: name -> (module, attribute).
# Commands defined in other packages, imported only when invoked: CLI name -> module. The module's
# click command whose ``name`` is the CLI name is used (so its Python attribute name does not matter).
LAZY_COMMANDS = {
    "train": "cliphaze.train.commands",
    "train-prompts": "cliphaze.train.commands",
    "eval": "cliphaze.train.commands",
}


class BadInput(click.ClickException):
    """Bad usage or bad input: one line, exit code 2."""

    exit_code = EXIT_BAD_INPUT


class RuntimeFailure(click.ClickException):
    """The run failed: one line, exit code 1."""

    exit_code = EXIT_RUNTIME


def _bad_input_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the user gave something unusable (imported lazily: they live in heavy modules)."""
    from pipelines.config import PipelineConfigError
    from pipelines.dehazers import DehazerChoiceError
    from stream.errors import BadUriError, SinkOpenError, SourceOpenError

    types: list[type[BaseException]] = [
        BadUriError,
        SourceOpenError,
        SinkOpenError,
        PipelineConfigError,
        DehazerChoiceError,
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
    ]
    with contextlib.suppress(ImportError):  # the checkpoint module lands with the model package
        from cliphaze.checkpoint import CheckpointError

        types.append(CheckpointError)
    return tuple(types)


def _one_line(error: BaseException) -> str:
    from stream.uri import redact

    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return " ".join(redact(word) for word in text.split(" "))


@dataclass
class AppContext:
    """State shared by the commands (``pass_obj``)."""

    verbosity: int = 0  # -1 quiet, 0 normal, 1 info+, 2 debug


class CliGroup(click.Group):
    """Click group that turns every exception into one line and an exit code, and loads lazy commands."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [name for name, module in LAZY_COMMANDS.items() if _module_exists(module)]
        return sorted([*super().list_commands(ctx), *lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        module_name = LAZY_COMMANDS.get(cmd_name)
        if command is None and module_name is not None and _module_exists(module_name):
            module = importlib.import_module(module_name)
            found = [c for c in vars(module).values() if isinstance(c, click.Command) and c.name == cmd_name]
            command = found[0] if found else None
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as error:  # CLI boundary: one line, never a traceback
            logger.debug("failure", exc_info=True)
            if isinstance(error, _bad_input_types()):
                raise BadInput(_one_line(error)) from error
            raise RuntimeFailure(_one_line(error)) from error


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _configure_logging(verbosity: int) -> None:
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_cliphaze", False)]
    if ours:
        ours[0].setStream(sys.stderr)  # type: ignore[attr-defined]  # stderr may have been swapped (tests, pipes)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler._cliphaze = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    # The user-facing notes of this command are INFO-level and shown at normal verbosity.
    logger.setLevel(level if verbosity > 1 else logging.INFO if verbosity >= 0 else logging.ERROR)


def _verbosity_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    def set_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
        if value:
            app = ctx.ensure_object(AppContext)
            app.verbosity = max(app.verbosity, value)
            _configure_logging(app.verbosity)

    def set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            app = ctx.ensure_object(AppContext)
            app.verbosity = -1
            _configure_logging(-1)

    fn = click.option("-v", "--verbose", count=True, expose_value=False, callback=set_verbose,
                      help="More log output (-vv: debug).")(fn)  # fmt: skip
    fn = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=set_quiet,
                      help="Only errors.")(fn)  # fmt: skip
    return fn


@click.group(cls=CliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@_verbosity_options
@click.version_option(package_name="cliphaze")
@click.pass_context
def main(ctx: click.Context) -> None:
    """cliphaze: real-time video dehazing (CLIPHaze network, dark channel prior baseline)."""
    app = ctx.ensure_object(AppContext)
    _configure_logging(app.verbosity)


# --- shared option groups ---------------------------------------------------------------------------------


def _model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    from pipelines.config import PRECISIONS

    for option in reversed(
        [
            click.option("--model", "model", type=click.Choice(["auto", "cliphaze", "dcp", "none"]), default="auto",
                         show_default=True, help="auto = trained CLIPHaze when installed, else dcp."),
            click.option("--weights", type=click.Path(path_type=Path, dir_okay=False, exists=True),
                         help="CLIPHaze bundle (.safetensors)."),
            click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
            click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True),
            click.option("--scan-backend", default="auto", show_default=True, help="Selective-scan backend."),
            click.option("--threads", type=click.IntRange(0, None), default=0, show_default=True,
                         help="CPU threads for the dehazer; 0 = half the cores (decode/encode need the rest)."),
        ]
    ):  # fmt: skip
        fn = option(fn)
    return fn


@dataclass(frozen=True)
class DehazerPlan:
    """A validated dehazer choice; ``create`` builds it (after the inputs proved usable)."""

    choice: Any  # pipelines.dehazers.DehazerChoice
    device: Any  # torch.device
    precision: str
    scan_backend: str
    threads: int  # torch intra-op threads on the CPU (0 = half the cores)
    compile_mode: str = "off"  # torch.compile mode of the cliphaze network (cliphaze.compiled.COMPILE_MODES)

    def create(self) -> Any:
        import torch

        from pipelines.dehazers import create_dehazer

        if self.device.type == "cpu":
            # OpenMP workers spin on busy cores: sharing every core with the decoder and encoder threads
            # made dcp 5-10x slower than leaving them half (measured on 2 cores).
            torch.set_num_threads(self.threads or max(1, (os.cpu_count() or 1) // 2))
        return create_dehazer(self.choice, self.device, precision=self.precision, scan_backend=self.scan_backend,
                              compile_mode=self.compile_mode)


def _plan_dehazer(
    model: str, weights: Path | None, device: str, precision: str, scan_backend: str, threads: int,
    compile_mode: str = "off",
) -> DehazerPlan:
    """Validate model, weights and device without loading anything yet."""
    from pipelines.dehazers import choose_dehazer, resolve_device

    return DehazerPlan(choose_dehazer(model, weights), resolve_device(device), precision, scan_backend, threads,
                       compile_mode)


def _with_credentials(uri: str, user: str | None, password: str | None) -> str:
    """Put RTSP credentials from options/env into an RTSP URL: the user when it has none, the password when
    it names a user without one (``rtsp://admin@cam/x`` + ``CLIPHAZE_RTSP_PASSWORD``)."""
    parts = urlsplit(uri)
    if parts.scheme not in RTSP_SCHEMES or parts.password is not None:
        return uri
    name = parts.username if parts.username is not None else (quote(user, safe="") if user else None)
    if name is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[-1]
    userinfo = name + (":" + quote(password, safe="") if password else "")
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def _check_local_input(source: str) -> None:
    """Plain paths: fail fast with a clear line for missing files and directories."""
    from stream.uri import parse_source

    spec = parse_source(source)
    if spec.kind != "file":
        return
    path = Path(spec.url.removeprefix("file://"))
    if path.is_dir():
        raise BadInput(f"{source} is a directory, not a video")
    if not path.exists():
        raise BadInput(f"{source}: no such file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise BadInput(f"{source} is an image, not a video: use 'cliphaze image'")


def _check_output_is_not_input(source: str, output: str, output_format: str | None) -> None:
    """Refuse to write over the input (the .part rename would replace the file being read)."""
    from stream.uri import parse_sink, parse_source

    spec, sink = parse_source(source), parse_sink(output, output_format)
    if spec.kind != "file" or not sink.is_file:
        return
    target = Path(sink.url)
    if target.exists() and Path(spec.url).exists() and os.path.samefile(spec.url, target):
        raise BadInput(f"output {output} is the input file; choose another output path")


def _default_output(source: str) -> str:
    from stream.uri import parse_source

    spec = parse_source(source)
    if spec.kind != "file":
        raise BadInput("live and piped sources need an output: -o PATH|URL|-")
    path = Path(spec.url.removeprefix("file://"))
    return str(path.with_name(f"{path.stem}_dehazed.mp4"))


@contextlib.contextmanager
def _signals(stop: threading.Event) -> Iterator[None]:
    """First SIGINT/SIGTERM: set ``stop`` (drain, finalize, exit 0). Second: leave at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits = {"count": 0}

    def handler(signum: int, _frame: object) -> None:
        hits["count"] += 1
        if hits["count"] > 1:
            os._exit(EXIT_HARD_STOP)
        logger.warning("%s: finishing the output (send again to quit at once)", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _Progress:
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


def _write_json(path: Path, payload: dict[str, Any]) -> None:
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


def _handle_signals(stop: threading.Event) -> None:
    """Install the SIGINT/SIGTERM handlers for the rest of the command (first signal sets ``stop``)."""
    click.get_current_context().with_resource(_signals(stop))


def _run_job(job: DehazeJob, plan: DehazerPlan, stop: threading.Event) -> tuple[Any, Any]:
    """Open source and sink, build the dehazer, run, finalize. Returns (RunStats, dehazer).

    ``stop`` is set by the signal handlers (installed by the command before anything heavy loads): a signal
    at any moment lets the run drain, finalizes the output and exits 0.
    """
    import dataclasses

    from pipelines.gap_filler import GapFiller
    from pipelines.metrics import MetricsServer
    from pipelines.runner import run
    from stream.republish import PUBLISH_KINDS, RepublishingSink
    from stream.sink import open_sink
    from stream.source import SourceOptions, open_source
    from stream.uri import parse_sink, redact

    with contextlib.ExitStack() as stack:
        source = stack.enter_context(open_source(job.source, SourceOptions()))
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
        progress = _Progress(total, use_bar=sys.stderr.isatty() and not to_stdout and not info.is_live,
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
        _write_json(job.stats_path, stats.to_dict())
    logger.info(
        "%d frames in %.1f s (%.1f fps, latency p50 %.0f ms, p95 %.0f ms, %d dropped)%s",
        stats.frames_out, stats.wall_s, stats.fps, stats.latency_ms_p50, stats.latency_ms_p95, stats.frames_dropped,
        " (stopped early)" if stats.stopped_early else "",
    )  # fmt: skip
    if stats.corrupt_packets:
        logger.warning("%d corrupt video packets were skipped", stats.corrupt_packets)
    return stats, dehazer


# --- dehaze -----------------------------------------------------------------------------------------------


@main.command()
@click.argument("source")
@click.option("-o", "--output", help="Output file, URL (rtsp/rtmp/srt) or - for stdout. Default: <name>_dehazed.mp4.")
@click.option("--format", "output_format", help="Container for stdout or to override the extension (mpegts, nut...).")
@_model_options
@click.option("--batch", type=int, default=1, show_default=True, help="Frames per network call.")
@click.option("--guidance-every", type=int, default=8, show_default=True, help="Refresh CLIP guidance every N frames.")
@click.option("--guidance-ema", type=float, default=0.5, show_default=True, help="Weight of fresh guidance (1 = none).")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Network resolution factor in (0, 1].")
@click.option("--compile", "compile_mode", type=click.Choice(["off", "default", "reduce-overhead", "max-autotune"]),
              default="off", show_default=True,
              help="torch.compile the cliphaze network (reduce-overhead = CUDA graphs, CUDA only; the first frame "
                   "compiles).")  # fmt: skip
@click.option("--codec", default="libx264", show_default=True, help="libx264, libx265, h264_nvenc, hevc_nvenc, auto.")
@click.option("--crf", type=int, default=23, show_default=True, help="Quality, 1 (best) to 51.")
@click.option("--preset", default="veryfast", show_default=True)
@click.option("--gop", "gop_s", type=float, default=2.0, show_default=True, help="Keyframe interval in seconds (<= 2).")
@click.option("--max-frames", type=int, help="Stop after N frames.")
@click.option("--duration", "duration_s", type=float, help="Stop after this many seconds of input.")
@click.option("--side-by-side", is_flag=True, help="Write before | after frames.")
@click.option("--stats", "stats_path", type=click.Path(path_type=Path, dir_okay=False), help="Write a JSON summary.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="Serve Prometheus metrics on this port.")
@click.option("--metrics-addr", default="127.0.0.1", show_default=True, help="Bind address of the metrics endpoint.")
@click.option("--density-log", type=click.Path(path_type=Path, dir_okay=False), help="JSON lines: pts, mean density.")
@click.option("--fill-gaps/--no-fill-gaps", default=True, show_default=True,
              help="Live sources: repeat the last frame while the camera is away, so recorders see no gap.")
@click.option("--rtsp-user", envvar="CLIPHAZE_RTSP_USER", help="RTSP user (env CLIPHAZE_RTSP_USER).")
@click.option("--rtsp-password", envvar="CLIPHAZE_RTSP_PASSWORD", help="RTSP password (env CLIPHAZE_RTSP_PASSWORD).")
@_verbosity_options
@click.pass_obj
def dehaze(app: AppContext, source: str, output: str | None, output_format: str | None, model: str,
           weights: Path | None, device: str, precision: str, scan_backend: str, threads: int, batch: int, guidance_every: int,
           guidance_ema: float, scale: float, compile_mode: str, codec: str, crf: int, preset: str, gop_s: float,
           max_frames: int | None, duration_s: float | None, side_by_side: bool, stats_path: Path | None,
           metrics_port: int | None, metrics_addr: str, density_log: Path | None, fill_gaps: bool,
           rtsp_user: str | None, rtsp_password: str | None) -> None:  # fmt: skip
    """Dehaze SOURCE (file, rtsp/rtmp/srt/http URL, /dev/videoN, or - for stdin)."""
    stop = threading.Event()
    _handle_signals(stop)
    from pipelines.config import GuidanceCacheConfig, PipelineConfig

    source = _with_credentials(source, rtsp_user, rtsp_password)
    _check_local_input(source)
    if output is not None:
        _check_output_is_not_input(source, output, output_format)
    pipeline = PipelineConfig(
        batch=batch,
        device=device,
        precision=precision,
        guidance=GuidanceCacheConfig(refresh_every=guidance_every, ema_weight=guidance_ema),
        scale=scale,
        side_by_side=side_by_side,
        max_frames=max_frames,
        max_duration_s=duration_s,
        want_density=density_log is not None or metrics_port is not None,
    )
    encoder = _encoder_config(codec, crf, preset, gop_s)
    job = DehazeJob(source, output or _default_output(source), output_format, pipeline, encoder, stats_path,
                    metrics_port, metrics_addr, density_log, fill_gaps)  # fmt: skip
    _run_job(job, _plan_dehazer(model, weights, device, precision, scan_backend, threads, compile_mode), stop)


def _encoder_config(codec: str, crf: int, preset: str, gop_s: float) -> Any:
    from stream.encoder import EncoderConfig

    if not CRF_MIN <= crf <= CRF_MAX:
        raise BadInput(f"crf must be in [{CRF_MIN}, {CRF_MAX}], got {crf}")
    try:
        return EncoderConfig(codec=codec, crf=crf, preset=preset, gop_s=gop_s)
    except ValueError as error:
        raise BadInput(str(error)) from error


# --- demo -------------------------------------------------------------------------------------------------


@main.command()
@click.option("-o", "--output", default=DEMO_OUTPUT, show_default=True, help="Before/after video to write.")
@_model_options
@_verbosity_options
@click.pass_obj
def demo(app: AppContext, output: str, model: str, weights: Path | None, device: str, precision: str,
         scan_backend: str, threads: int) -> None:  # fmt: skip
    """Dehaze the bundled hazy sample clip into a side-by-side before/after video."""
    stop = threading.Event()
    _handle_signals(stop)
    from pipelines.config import PipelineConfig
    from stream.encoder import EncoderConfig

    with importlib.resources.as_file(importlib.resources.files("cliphaze") / "assets" / SAMPLE_CLIP) as sample:
        if not sample.is_file():
            raise RuntimeFailure(f"the bundled sample clip {SAMPLE_CLIP} is missing from this installation")
        job = DehazeJob(str(sample), output, None, PipelineConfig(device=device, precision=precision,
                        side_by_side=True), EncoderConfig(), None, None, "127.0.0.1", None)  # fmt: skip
        stats, dehazer = _run_job(job, _plan_dehazer(model, weights, device, precision, scan_backend, threads), stop)
    click.echo(f"wrote {output}: {stats.frames_out} frames, hazy | dehazed ({dehazer.name}, {stats.fps:.1f} fps)")


# --- image ------------------------------------------------------------------------------------------------


def _collect_images(inputs: tuple[Path, ...]) -> list[Path]:
    images: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise BadInput(f"{item}: no images ({', '.join(IMAGE_SUFFIXES)})")
            images.extend(found)
        elif item.suffix.lower() in IMAGE_SUFFIXES:
            images.append(item)
        else:
            raise BadInput(f"{item}: not an image ({', '.join(IMAGE_SUFFIXES)})")
    return images


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Output image (one input) or folder.")  # fmt: skip
@_model_options
@click.option("--scale", type=float, default=1.0, show_default=True, help="Network resolution factor in (0, 1].")
@_verbosity_options
@click.pass_obj
def image(app: AppContext, inputs: tuple[Path, ...], output: Path, model: str, weights: Path | None, device: str,
          precision: str, scan_backend: str, threads: int, scale: float) -> None:  # fmt: skip
    """Dehaze images and folders of images."""
    import cv2
    import torch

    if not 0.0 < scale <= 1.0:
        raise BadInput(f"scale must be in (0, 1], got {scale}")
    images = _collect_images(inputs)
    single = len(images) == 1 and output.suffix.lower() in IMAGE_SUFFIXES
    if not single:
        if output.exists() and not output.is_dir():
            raise BadInput(f"{output}: several images need an output folder")
        output.mkdir(parents=True, exist_ok=True)
    plan = _plan_dehazer(model, weights, device, precision, scan_backend, threads)
    dehazer = plan.create()
    logger.info("%s", plan.choice.note)
    for path in images:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise BadInput(f"{path}: cannot be read as an image")
        frames = torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))[None].to(dehazer.device)
        reset = getattr(dehazer, "reset", None)  # stateful dehazers (dcp's airlight EMA): images are independent
        if reset is not None:
            reset()
        restored = dehazer.restore(frames, None, scale=scale)[0].cpu().numpy()
        target = output if single else output / f"{path.stem}{path.suffix}"
        if not cv2.imwrite(str(target), cv2.cvtColor(restored, cv2.COLOR_RGB2BGR)):
            raise RuntimeFailure(f"cannot write {target}")
        logger.info("%s -> %s", path, target)
    click.echo(f"dehazed {len(images)} image(s) with {dehazer.name} -> {output}")


# --- probe ------------------------------------------------------------------------------------------------


@main.command()
@click.argument("source")
@click.option("--device", default="auto", show_default=True)
@click.option("--codec", default="libx264", show_default=True, help="Encoder that would be requested.")
@click.option("--rtsp-user", envvar="CLIPHAZE_RTSP_USER")
@click.option("--rtsp-password", envvar="CLIPHAZE_RTSP_PASSWORD")
@_verbosity_options
@click.pass_obj
def probe(app: AppContext, source: str, device: str, codec: str, rtsp_user: str | None,
          rtsp_password: str | None) -> None:  # fmt: skip
    """Show what dehazing SOURCE would do (streams, colour, device and encoder paths) without processing."""
    from pipelines.dehazers import choose_dehazer, resolve_device
    from stream.encoder import select_codec
    from stream.probe import probe as probe_source
    from stream.uri import redact

    source = _with_credentials(source, rtsp_user, rtsp_password)
    _check_local_input(source)
    info = probe_source(source)
    rate = f"{float(info.fps):.3f} fps" if info.fps else "unknown rate"
    lines = [
        f"source:   {redact(source)} ({'live' if info.is_live else 'file/pipe'})",
        f"video:    {info.codec} {info.width}x{info.height} {info.pix_fmt}, {rate}",
        f"colour:   matrix {info.color_matrix}, range {info.color_range}, rotation {info.rotation}",
    ]
    if info.duration_s is not None:
        lines.append(f"duration: {info.duration_s:.2f} s" + (f", {info.frame_count} frames" if info.frame_count else ""))
    for audio in info.audio:
        lines.append(f"audio:    #{audio.index} {audio.codec} {audio.sample_rate} Hz, {audio.channels} ch (copied)")
    resolved = resolve_device(device)
    choice = choose_dehazer("auto", None)
    lines += [
        f"device:   {resolved} (requested {device}); decode on the CPU, upload to {resolved}",
        f"model:    {choice.model} ({choice.note})",
        f"encoder:  {select_codec(codec)} (requested {codec}), yuv420p BT.709 limited range",
    ]
    click.echo("\n".join(lines))


# --- models -----------------------------------------------------------------------------------------------


@main.command()
@_verbosity_options
def models() -> None:
    """List the CLIPHaze variants (params, GMACs) and the baselines."""
    from cliphaze.complexity import format_model_table
    from pipelines.dehazers import SHIPPED_BUNDLE_IS_DEFAULT, default_weights

    click.echo(format_model_table())
    bundled = default_weights()
    if bundled is None:
        click.echo("trained default: not installed (auto uses dcp)")
    elif SHIPPED_BUNDLE_IS_DEFAULT:
        click.echo(f"trained default: {bundled.name} (auto uses it)")
    else:
        click.echo(
            f"shipped preview: {bundled.name} (opt-in with --model cliphaze; auto uses dcp, see docs/model-card.md)"
        )
    click.echo("baselines: dcp (dark channel prior, real time on a CPU), none (passthrough)")


# --- bench ------------------------------------------------------------------------------------------------


@main.group()
def bench() -> None:
    """Benchmarks that print numbers (scan kernels, video I/O, the whole pipeline)."""


@bench.command("scan")
@_verbosity_options
def bench_scan() -> None:
    """Selective-scan backends: forward and forward+backward time."""
    from cliphaze.ops.bench import ScanBenchConfig, format_scan_report, run_scan_benchmark

    config = ScanBenchConfig()
    click.echo(format_scan_report(config, run_scan_benchmark(config)))


@bench.command("io")
@_verbosity_options
def bench_io() -> None:
    """Decode and encode throughput of the stream package."""
    from stream.bench import run_io_benchmark

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
@_verbosity_options
def bench_pipeline(seconds: float, variants: str, frames: int, cliphaze_frames: int, cliphaze_scale: float,
                   device: str, threads: int, json_path: Path | None) -> None:  # fmt: skip
    """(a) I/O overhead vs ffmpeg, (b) model vs pipeline fps, (c) guidance every 1 vs 8, (d) dcp fps."""
    import torch

    from pipelines.bench import PipelineBenchConfig, run_pipeline_benchmark
    from pipelines.dehazers import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cpu":
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // 2))
    config = PipelineBenchConfig(seconds=seconds, variants=tuple(v for v in variants.split(",") if v),
                                 model_frames=frames, cliphaze_frames=cliphaze_frames,
                                 cliphaze_scale=cliphaze_scale)  # fmt: skip
    results = run_pipeline_benchmark(config, report=click.echo, device=str(resolved))
    if json_path is not None:
        _write_json(json_path, results)



@bench.command("realtime")
@click.option("--variants", default="dcp,cliphaze-t", show_default=True,
              help="dcp, none and CLIPHaze variants (random weights: speed only).")  # fmt: skip
@click.option("--resolutions", default="720p,1080p,4k", show_default=True)
@click.option("--scales", default="1,0.5,0.25", show_default=True, help="Network scales (CLIPHaze only).")
@click.option("--frames", type=click.IntRange(1, None), default=4, show_default=True, help="Frames timed per cell.")
@click.option("--max-frame-s", type=float, default=4.0, show_default=True,
              help="Skip cells whose estimated seconds per frame exceed this (keeps a CPU run to minutes).")  # fmt: skip
@click.option("--guidance-every", type=click.IntRange(1, None), default=8, show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--compile", "compile_mode", type=click.Choice(["off", "default", "reduce-overhead", "max-autotune"]),
              default="off", show_default=True)  # fmt: skip
@click.option("--batch", type=click.IntRange(1, None), default=1, show_default=True)
@click.option("--streams", type=click.IntRange(1, None), default=1, show_default=True,
              help="Concurrent end-to-end runs sharing one dehazer.")  # fmt: skip
@click.option("--no-e2e", is_flag=True, help="Model-only numbers (skip the engine runs).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(0, None), default=0, show_default=True,
              help="torch CPU threads (0 = half the cores, as dehaze).")  # fmt: skip
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Also write the rows.")
@_verbosity_options
def bench_realtime(variants: str, resolutions: str, scales: str, frames: int, max_frame_s: float,
                   guidance_every: int, precision: str, compile_mode: str, batch: int, streams: int, no_e2e: bool,
                   device: str, threads: int, json_path: Path | None) -> None:  # fmt: skip
    """Variant x resolution x scale: model-only fps, end-to-end fps, latency p50/p95, guidance share."""
    import torch

    from pipelines.dehazers import resolve_device
    from pipelines.realtime_bench import RESOLUTIONS, RealtimeBenchConfig, run_realtime_benchmark

    resolved = resolve_device(device)
    if resolved.type == "cpu":
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // 2))
    names = tuple(r for r in resolutions.lower().split(",") if r)
    unknown = [r for r in names if r not in RESOLUTIONS]
    if unknown:
        raise BadInput(f"unknown resolution(s) {', '.join(unknown)}; choose from {', '.join(RESOLUTIONS)}")
    try:
        scale_values = tuple(float(s) for s in scales.split(",") if s)
    except ValueError as exc:
        raise BadInput(f"--scales must be numbers, got {scales!r}") from exc
    if not all(0.0 < s <= 1.0 for s in scale_values):
        raise BadInput(f"scales must be in (0, 1], got {scales}")
    config = RealtimeBenchConfig(variants=tuple(v for v in variants.split(",") if v), resolutions=names,
                                 scales=scale_values, frames=frames, guidance_every=guidance_every,
                                 max_frame_s=max_frame_s, precision=precision, compile_mode=compile_mode,
                                 batch=batch, streams=streams, end_to_end=not no_e2e)  # fmt: skip
    click.echo(f"device {resolved}, torch threads {torch.get_num_threads()}; CLIPHaze weights are random (speed only)")
    results = run_realtime_benchmark(config, device=str(resolved), report=click.echo)
    skipped = sum(1 for row in results["rows"] if "skipped" in row)
    if skipped:
        click.echo(f"{skipped} cell(s) skipped: estimated over --max-frame-s {max_frame_s:g} s per frame")
    if json_path is not None:
        _write_json(json_path, results)

if __name__ == "__main__":
    main()
