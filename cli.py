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
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

# Choice lists from their owning modules (torch- and av-free, so --help stays light).
from cliphaze.run_options import COMPILE_MODES, PRECISION_NAMES
from pipelines.dehazers import MODEL_CHOICES

# stream.hwdec.HWDEC_CHOICES, written out: that module imports av (tests/test_cli.py checks they agree).
HWDEC_CHOICES = ("none", "auto", "cuda")

logger = logging.getLogger(__name__)

EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2
EXIT_HARD_STOP = 130  # second signal: leave at once
CRF_MIN, CRF_MAX = 1, 51  # x264/x265 constant-rate factor; 0 (lossless) needs High 4:4:4, the sink encodes High
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEMO_OUTPUT = "cliphaze_demo.mp4"
SAMPLE_CLIP = "sample_hazy.mp4"
# The demo runs the CLIPHaze network at this resolution factor on a CPU (guided upsampling restores full
# resolution; docs/performance.md), so the 100-frame sample takes minutes rather than a quarter of an hour.
DEMO_CPU_SCALE = 0.5
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
JOB_LOGGER = "pipelines.job"  # its lines are user-facing notes too
SERVE_LOGGERS = ("pipelines.serve.engine", "pipelines.serve.camera")  # camera starts, stops, restarts: notes too
# Lazily registered commands from other packages: name -> (module, attribute).
# Commands defined in other packages, imported only when invoked: CLI name -> module. The module's
# click command whose ``name`` is the CLI name is used (so its Python attribute name does not matter).
LAZY_COMMANDS = {
    "bench": "pipelines.bench.commands",
    "train": "pipelines.train_commands",
    "train-prompts": "pipelines.train_commands",
    "eval": "pipelines.train_commands",
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
    # The user-facing notes of this command and of the job it runs are INFO-level, shown at normal verbosity.
    notes_level = level if verbosity > 1 else logging.INFO if verbosity >= 0 else logging.ERROR
    for name in (logger.name, JOB_LOGGER, *SERVE_LOGGERS):
        logging.getLogger(name).setLevel(notes_level)


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
    for option in reversed(
        [
            click.option("--model", "model", type=click.Choice(MODEL_CHOICES), default="auto",
                         show_default=True, help="auto = trained CLIPHaze when installed, else dcp."),
            click.option("--weights", type=click.Path(path_type=Path, dir_okay=False, exists=True),
                         help="CLIPHaze bundle (.safetensors)."),
            click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
            click.option("--precision", type=click.Choice(PRECISION_NAMES), default="fp32", show_default=True),
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


def _handle_signals(stop: threading.Event) -> None:
    """Install the SIGINT/SIGTERM handlers for the rest of the command (first signal sets ``stop``)."""
    click.get_current_context().with_resource(_signals(stop))


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
@click.option("--compile", "compile_mode", type=click.Choice(COMPILE_MODES),
              default="off", show_default=True,
              help="torch.compile the cliphaze network (reduce-overhead = CUDA graphs, CUDA only; the first frame "
                   "compiles).")  # fmt: skip
@click.option("--hwdec", type=click.Choice(HWDEC_CHOICES), default="none", show_default=True,
              help="Decode on the GPU (NVDEC via PyAV hwaccel); falls back to the CPU, saying why. Not yet measured "
                   "on a GPU, hence off by default.")  # fmt: skip
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
           guidance_ema: float, scale: float, compile_mode: str, hwdec: str, codec: str, crf: int, preset: str,
           gop_s: float,
           max_frames: int | None, duration_s: float | None, side_by_side: bool, stats_path: Path | None,
           metrics_port: int | None, metrics_addr: str, density_log: Path | None, fill_gaps: bool,
           rtsp_user: str | None, rtsp_password: str | None) -> None:  # fmt: skip
    """Dehaze SOURCE (file, rtsp/rtmp/srt/http URL, /dev/videoN, or - for stdin)."""
    stop = threading.Event()
    _handle_signals(stop)
    from pipelines.config import GuidanceCacheConfig, PipelineConfig
    from stream.uri import with_credentials

    source = with_credentials(source, rtsp_user, rtsp_password)
    _check_local_input(source)
    if output is not None:
        _check_output_is_not_input(source, output, output_format)
    pipeline = PipelineConfig(
        batch=batch,
        guidance=GuidanceCacheConfig(refresh_every=guidance_every, ema_weight=guidance_ema),
        scale=scale,
        side_by_side=side_by_side,
        max_frames=max_frames,
        max_duration_s=duration_s,
        want_density=density_log is not None or metrics_port is not None,
    )
    encoder = _encoder_config(codec, crf, preset, gop_s)
    from pipelines.job import DehazeJob, run_job

    job = DehazeJob(source, output or _default_output(source), output_format, pipeline, encoder, stats_path,
                    metrics_port, metrics_addr, density_log, fill_gaps, hwdec)  # fmt: skip
    run_job(job, _plan_dehazer(model, weights, device, precision, scan_backend, threads, compile_mode), stop)


def _encoder_config(codec: str, crf: int, preset: str, gop_s: float) -> Any:
    from stream.encoder import EncoderConfig

    if not CRF_MIN <= crf <= CRF_MAX:
        raise BadInput(f"crf must be in [{CRF_MIN}, {CRF_MAX}], got {crf}")
    try:
        return EncoderConfig(codec=codec, crf=crf, preset=preset, gop_s=gop_s)
    except ValueError as error:
        raise BadInput(str(error)) from error


# --- serve ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _reload_signal(reload: threading.Event) -> Iterator[None]:
    """SIGHUP sets ``reload`` (serve reads its configuration again)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        yield
        return
    previous = signal.signal(signal.SIGHUP, lambda _signum, _frame: reload.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


@main.command()
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--max-batch", type=click.IntRange(1, None), default=8, show_default=True,
              help="Most frames (of all cameras) per network call.")
@click.option("--max-wait-ms", type=click.FloatRange(0, 1000), default=5.0, show_default=True,
              help="Longest wait for other cameras' frames before a partial batch runs.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--scan-backend", default="auto", show_default=True, help="Selective-scan backend.")
@click.option("--threads", type=click.IntRange(0, None), default=0, show_default=True,
              help="CPU threads for the dehazers; 0 = half the cores.")
@click.option("--http-port", type=click.IntRange(0, 65535), default=9110, show_default=True,
              help="/healthz, /cameras (JSON) and /metrics (Prometheus).")
@click.option("--http-addr", default="127.0.0.1", show_default=True, help="Bind address of the status endpoint.")
@click.option("--ray", "ray_address",
              help="Serve on a Ray cluster: its address, auto, or local (pip install 'cliphaze[ray]').")
@click.option("--ray-actors", type=click.IntRange(1, None),
              help="Serving actors on the cluster [default: one per GPU, else one per node].")
@click.option("--rtsp-user", envvar="CLIPHAZE_RTSP_USER", help="Default RTSP user (env CLIPHAZE_RTSP_USER).")
@click.option("--rtsp-password", envvar="CLIPHAZE_RTSP_PASSWORD",
              help="Default RTSP password (env CLIPHAZE_RTSP_PASSWORD).")
@_verbosity_options
@click.pass_obj
def serve(app: AppContext, config: Path, max_batch: int, max_wait_ms: float, device: str, precision: str,
          scan_backend: str, threads: int, http_port: int, http_addr: str, ray_address: str | None,
          ray_actors: int | None, rtsp_user: str | None, rtsp_password: str | None) -> None:  # fmt: skip
    """Dehaze many cameras listed in CONFIG (YAML or TOML) with one shared model per device.

    SIGTERM/SIGINT drain and finalize every output; SIGHUP reloads CONFIG (added, removed and changed cameras
    start and stop, the others go on).
    """
    stop, reload = threading.Event(), threading.Event()
    _handle_signals(stop)
    click.get_current_context().with_resource(_reload_signal(reload))
    from pipelines.serve.batcher import BatchConfig
    from pipelines.serve.engine import ServeOptions

    options = ServeOptions(batch=BatchConfig(max_batch=max_batch, max_wait_ms=max_wait_ms), device=device,
                           precision=precision, scan_backend=scan_backend, threads=threads, http_port=http_port,
                           http_addr=http_addr)  # fmt: skip
    if ray_address is not None:
        from pipelines.serve.ray_cluster import serve_on_ray

        final = serve_on_ray(config, options, stop, reload, address=ray_address, actors=ray_actors,
                             rtsp_user=rtsp_user, rtsp_password=rtsp_password)  # fmt: skip
    else:
        from pipelines.serve.engine import serve as serve_here

        final = serve_here(config, options, stop, reload, rtsp_user=rtsp_user, rtsp_password=rtsp_password)
    for camera in final:
        logger.info("camera %s: %s, %d frames out, %d dropped, %d reconnects, %d restarts", camera["name"],
                    camera["state"], camera["frames_out"], camera["drops"], camera["reconnects"], camera["restarts"])


# --- demo -------------------------------------------------------------------------------------------------


@main.command()
@click.option("-o", "--output", default=DEMO_OUTPUT, show_default=True, help="Before/after video to write.")
@_model_options
@click.option("--scale", type=float, default=None,
              help=f"Network resolution factor in (0, 1] [default: 1, or {DEMO_CPU_SCALE} for cliphaze on a CPU].")
@_verbosity_options
@click.pass_obj
def demo(app: AppContext, output: str, model: str, weights: Path | None, device: str, precision: str,
         scan_backend: str, threads: int, scale: float | None) -> None:  # fmt: skip
    """Dehaze the bundled hazy sample clip into a side-by-side before/after video."""
    stop = threading.Event()
    _handle_signals(stop)
    from pipelines.config import PipelineConfig
    from pipelines.job import DehazeJob, run_job
    from stream.encoder import EncoderConfig

    plan = _plan_dehazer(model, weights, device, precision, scan_backend, threads)
    if scale is None:
        scale = DEMO_CPU_SCALE if plan.choice.model == "cliphaze" and plan.device.type == "cpu" else 1.0
        if scale < 1.0:
            logger.info("demo on the CPU: the network runs at %.2gx resolution (--scale 1 for full)", scale)
    if not 0.0 < scale <= 1.0:
        raise BadInput(f"scale must be in (0, 1], got {scale}")
    with importlib.resources.as_file(importlib.resources.files("cliphaze") / "assets" / SAMPLE_CLIP) as sample:
        if not sample.is_file():
            raise RuntimeFailure(f"the bundled sample clip {SAMPLE_CLIP} is missing from this installation")
        job = DehazeJob(str(sample), output, None, PipelineConfig(side_by_side=True, scale=scale), EncoderConfig(),
                        None, None, "127.0.0.1", None)  # fmt: skip
        stats, dehazer = run_job(job, plan, stop)
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
    from stream.uri import redact, with_credentials

    source = with_credentials(source, rtsp_user, rtsp_password)
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

if __name__ == "__main__":
    main()
