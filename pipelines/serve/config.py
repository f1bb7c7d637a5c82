"""``cliphaze serve`` configuration: a YAML or TOML file that lists cameras, read into frozen dataclasses.

Example (YAML; the same keys work in TOML with ``[[cameras]]`` tables)::

    defaults:                 # optional: applies to every camera unless it says otherwise
      model: dcp
      guidance_every: 8
    cameras:
      - name: driveway
        source: rtsp://admin@192.0.2.10/stream1   # password from CLIPHAZE_RTSP_PASSWORD
        sink: rtsp://127.0.0.1:8554/driveway_dehazed
      - name: gate
        source: rtsp://viewer@192.0.2.11/main
        password_env: GATE_PASSWORD                # this camera's own secret
        sink: recordings/gate_%Y%m%d_%H%M%S.mp4
        scale: 0.5
        codec: libx265
        density_log: fog/gate.jsonl

Secrets never sit in the file: ``${VAR}`` in a source or sink is taken from the environment, and RTSP
credentials come from ``CLIPHAZE_RTSP_USER`` / ``CLIPHAZE_RTSP_PASSWORD`` (as in ``dehaze``) or a camera's
``password_env`` (sinks never get a camera's credentials). Relative paths are relative to the file's
folder. Every error is one line naming the camera and the key (``ServeConfigError``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import PipelineConfigError
from stream.uri import with_credentials

MODELS = ("dcp", "none", "cliphaze")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # safe in metric labels, URLs and file names
ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
CAMERA_KEYS = frozenset({"name", "source", "sink", "format", "model", "weights", "scale", "guidance_every",
                         "codec", "crf", "preset", "density_log", "password_env", "fill_gaps"})  # fmt: skip


class ServeConfigError(PipelineConfigError):
    """The serve configuration cannot be used (reported as bad input, exit code 2)."""


@dataclass(frozen=True)
class CameraConfig:
    """One camera: where frames come from, where they go, how they are dehazed."""

    name: str  # unique; labels metrics and log lines ([A-Za-z0-9_.-], at most 64 characters)
    source: str  # file, rtsp/rtmp/srt/http URL, /dev/videoN (credentials filled in from the environment)
    sink: str  # output file, segment pattern, publish URL (rtsp/rtmp/srt) or "-" is refused (one stdout)
    format: str | None = None  # container override of the sink (mpegts, matroska...)
    model: str = "dcp"  # dcp | none | cliphaze: cameras with the same model and weights share one dehazer
    weights: Path | None = None  # CLIPHaze bundle (model cliphaze; None = the shipped bundle)
    scale: float = 1.0  # network resolution factor in (0, 1]
    guidance_every: int = 8  # frames between guidance (and haze density) refreshes of this camera
    codec: str = "libx264"  # encoder (stream.encoder.CODECS)
    crf: int = 23  # encoder quality, 1 (best) to 51
    preset: str = "veryfast"  # encoder preset
    density_log: Path | None = None  # JSON lines of pts and mean haze density
    fill_gaps: bool = True  # live sources: repeat the last frame while the camera is away

    @property
    def model_key(self) -> tuple[str, str]:
        """Cameras with equal keys share one dehazer (and one batcher)."""
        return self.model, str(self.weights or "")


@dataclass(frozen=True)
class ServeConfig:
    """The whole file: cameras in file order."""

    cameras: tuple[CameraConfig, ...]

    def by_name(self) -> dict[str, CameraConfig]:
        return {camera.name: camera for camera in self.cameras}


def _expand_env(text: str, where: str, env: Mapping[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ServeConfigError(f"{where}: environment variable {name} is not set")
        return env[name]

    return ENV_RE.sub(value, text)


def _local(text: str, base: Path) -> str:
    """A relative file path is relative to the config file's folder (services do not choose their cwd)."""
    if "://" in text or text.startswith(("/", "~", "-")) or text.strip() == "-":
        return text
    return str(base / text)


def _read_file(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ServeConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    suffix = path.suffix.lower()
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
        import tomli as tomllib
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ServeConfigError(f"{path}: not valid {suffix[1:].upper()}: {str(exc).splitlines()[0]}") from exc
    except Exception as exc:  # yaml.YAMLError (yaml imported lazily): one line for the user
        raise ServeConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    raise ServeConfigError(f"{path}: unknown config format {suffix or '(none)'}; use .yaml, .yml or .toml")


def _number(raw: Any, where: str, kind: type) -> Any:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or (kind is int and not isinstance(raw, int)):
        raise ServeConfigError(f"{where} must be {'an integer' if kind is int else 'a number'}, got {raw!r}")
    return kind(raw)


def _camera(raw: Any, index: int, defaults: Mapping[str, Any], env: Mapping[str, str], base: Path,
            user: str | None, password: str | None) -> CameraConfig:  # fmt: skip
    if not isinstance(raw, Mapping):
        raise ServeConfigError(f"cameras[{index}] must be a table/mapping with name, source and sink")
    merged = {**defaults, **raw}
    name = merged.get("name")
    where = f"camera {name!r}" if isinstance(name, str) else f"cameras[{index}]"
    unknown = sorted(set(merged) - CAMERA_KEYS)
    if unknown:
        raise ServeConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    for key in ("name", "source", "sink"):
        if not isinstance(merged.get(key), str) or not merged[key].strip():
            raise ServeConfigError(f"{where}: '{key}' is required (a string)")
    if not NAME_RE.match(merged["name"]):
        raise ServeConfigError(f"{where}: names use letters, digits, '_', '.', '-' (at most 64)")
    if merged["sink"].strip() == "-":
        raise ServeConfigError(f"{where}: stdout cannot carry several cameras; give each a file or URL")
    model = merged.get("model", "dcp")
    if model not in MODELS:
        raise ServeConfigError(f"{where}: model must be one of {', '.join(MODELS)}, got {model!r}")
    secret = password
    if "password_env" in merged:
        var = merged["password_env"]
        if not isinstance(var, str) or var not in env:
            raise ServeConfigError(f"{where}: password_env {var!r} is not set in the environment")
        secret = env[var]
    source = with_credentials(_local(_expand_env(merged["source"], f"{where} source", env), base), user, secret)
    sink = _local(_expand_env(merged["sink"], f"{where} sink", env), base)  # credentials of the camera stay out
    scale = _number(merged.get("scale", 1.0), f"{where}: scale", float)
    if not (math.isfinite(scale) and 0.0 < scale <= 1.0):
        raise ServeConfigError(f"{where}: scale must be in (0, 1], got {scale}")
    every = _number(merged.get("guidance_every", 8), f"{where}: guidance_every", int)
    if every < 1:
        raise ServeConfigError(f"{where}: guidance_every must be >= 1, got {every}")
    crf = _number(merged.get("crf", 23), f"{where}: crf", int)
    if not 1 <= crf <= 51:
        raise ServeConfigError(f"{where}: crf must be in [1, 51], got {crf}")
    from stream.encoder import CODECS

    codec = merged.get("codec", "libx264")
    if codec not in CODECS:
        raise ServeConfigError(f"{where}: codec must be one of {', '.join(CODECS)}, got {codec!r}")

    def path(key: str) -> Path | None:
        value = merged.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ServeConfigError(f"{where}: {key} must be a path string")
        resolved = Path(_expand_env(value, f"{where} {key}", env)).expanduser()
        return resolved if resolved.is_absolute() else base / resolved

    weights = path("weights")
    if weights is not None and model != "cliphaze":
        raise ServeConfigError(f"{where}: weights only apply to model cliphaze")
    if weights is not None and not weights.is_file():
        raise ServeConfigError(f"{where}: weights {weights} not found")
    fmt = merged.get("format")
    from stream.errors import BadUriError
    from stream.uri import parse_sink, parse_source, redact

    try:
        parse_source(source)
        parse_sink(sink, fmt if isinstance(fmt, str) else None)
    except BadUriError as exc:
        raise ServeConfigError(f"{where}: {redact(str(exc))}") from exc
    return CameraConfig(name=merged["name"], source=source, sink=sink, format=fmt if isinstance(fmt, str) else None,
                        model=model, weights=weights, scale=scale, guidance_every=every, codec=codec, crf=crf,
                        preset=str(merged.get("preset", "veryfast")), density_log=path("density_log"),
                        fill_gaps=bool(merged.get("fill_gaps", True)))  # fmt: skip


def load_config(path: Path, *, env: Mapping[str, str] | None = None, rtsp_user: str | None = None,
                rtsp_password: str | None = None) -> ServeConfig:  # fmt: skip
    """Read and check a serve configuration.

    Args:
        path: ``.yaml``/``.yml`` or ``.toml`` file. Relative paths inside it are relative to its folder.
        env: environment for ``${VAR}`` and ``password_env`` (default: ``os.environ``).
        rtsp_user: default RTSP user (``CLIPHAZE_RTSP_USER``).
        rtsp_password: default RTSP password (``CLIPHAZE_RTSP_PASSWORD``).

    Raises:
        ServeConfigError: unreadable, malformed, or a camera with a bad or missing setting.
    """
    env = os.environ if env is None else env
    data = _read_file(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("cameras"), list) or not data["cameras"]:
        raise ServeConfigError(f"{path}: needs a non-empty 'cameras' list")
    unknown = sorted(set(data) - {"cameras", "defaults"})
    if unknown:
        raise ServeConfigError(f"{path}: unknown top-level key(s) {', '.join(unknown)}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, Mapping) or {"name", "source", "sink"} & set(defaults):
        raise ServeConfigError(f"{path}: 'defaults' must be a mapping without name, source or sink")
    base = path.resolve().parent
    cameras = tuple(_camera(raw, i, defaults, env, base, rtsp_user, rtsp_password)
                    for i, raw in enumerate(data["cameras"]))  # fmt: skip
    seen: set[str] = set()
    sinks: dict[str, str] = {}
    for camera in cameras:
        if camera.name in seen:
            raise ServeConfigError(f"{path}: camera name {camera.name!r} appears twice")
        seen.add(camera.name)
        if camera.sink in sinks:
            raise ServeConfigError(f"{path}: cameras {sinks[camera.sink]!r} and {camera.name!r} write the same output")
        sinks[camera.sink] = camera.name
    return ServeConfig(cameras)

