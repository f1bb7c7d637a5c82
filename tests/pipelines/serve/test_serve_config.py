"""The serve configuration file: YAML and TOML, defaults, secrets from the environment, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.serve.config import CameraConfig, ServeConfigError, load_config

YAML = """
defaults:
  model: none
  guidance_every: 4
cameras:
  - name: driveway
    source: rtsp://admin@192.0.2.10/stream1
    sink: out/driveway.mkv
  - name: gate
    source: rtsp://viewer@192.0.2.11/main
    password_env: GATE_PW
    sink: rtsp://127.0.0.1:8554/${PATH_NAME}
    model: dcp
    scale: 0.5
    codec: libx265
    density_log: fog/gate.jsonl
"""

TOML = """
[defaults]
model = "none"
guidance_every = 4

[[cameras]]
name = "driveway"
source = "rtsp://admin@192.0.2.10/stream1"
sink = "out/driveway.mkv"

[[cameras]]
name = "gate"
source = "rtsp://viewer@192.0.2.11/main"
password_env = "GATE_PW"
sink = "rtsp://127.0.0.1:8554/${PATH_NAME}"
model = "dcp"
scale = 0.5
codec = "libx265"
density_log = "fog/gate.jsonl"
"""

ENV = {"GATE_PW": "g@te/pw", "PATH_NAME": "gate_dehazed"}


@pytest.mark.parametrize("suffix,text", [(".yaml", YAML), (".toml", TOML)])
def test_yaml_and_toml_give_the_same_cameras(tmp_path: Path, suffix: str, text: str) -> None:
    path = tmp_path / f"cams{suffix}"
    path.write_text(text)
    config = load_config(path, env=ENV, rtsp_user="ignored", rtsp_password="default-pw")
    driveway, gate = config.cameras
    assert driveway == CameraConfig(name="driveway", source="rtsp://admin:default-pw@192.0.2.10/stream1",
                                    sink=str(tmp_path / "out/driveway.mkv"), model="none",
                                    guidance_every=4)  # fmt: skip
    assert gate.source == "rtsp://viewer:g%40te%2Fpw@192.0.2.11/main"  # this camera's own secret, quoted
    assert gate.sink == "rtsp://127.0.0.1:8554/gate_dehazed"  # no camera credentials in the output
    assert (gate.model, gate.scale, gate.codec, gate.guidance_every) == ("dcp", 0.5, "libx265", 4)
    assert gate.density_log == tmp_path / "fog" / "gate.jsonl"  # relative to the file


@pytest.mark.parametrize(
    "body,message",
    [
        ("cameras: []", "non-empty 'cameras'"),
        ("cameras:\n  - name: a\n    source: x.mp4", "'sink' is required"),
        ("cameras:\n  - {name: a, source: x.mp4, sink: a.mkv}\n  - {name: a, source: y.mp4, sink: b.mkv}",
         "appears twice"),
        ("cameras:\n  - {name: a, source: x.mp4, sink: a.mkv, colour: red}", "unknown key(s) colour"),
        ("cameras:\n  - {name: a, source: x.mp4, sink: a.mkv, model: yolo}", "model must be one of"),
        ("cameras:\n  - {name: a, source: x.mp4, sink: a.mkv, scale: 2}", "scale must be in (0, 1]"),
        ("cameras:\n  - {name: a, source: x.mp4, sink: a.mkv, crf: fast}", "crf must be an integer"),
        ("cameras:\n  - {name: 'a b', source: x.mp4, sink: a.mkv}", "names use letters"),
        ("cameras:\n  - {name: a, source: 'rtsp://${NOPE}/x', sink: a.mkv}", "NOPE is not set"),
        ("cameras:\n  - {name: a, source: x.mp4, sink: '-'}", "stdout cannot carry"),
        ("cameras:\n  - {name: a, source: x.mp4, sink: a.mkv, password_env: MISSING}", "MISSING"),
        ("cameras: [", "not valid YAML"),
        ("cameras:\n  - {name: a, source: x.mp4, sink: a.mkv}\n  - {name: b, source: y.mp4, sink: a.mkv}",
         "write the same output"),
        ("cameras:\n  - {name: a, source: 'gopher://u:pw@cam/x', sink: a.mkv}", "unsupported source scheme"),
        ("cameras:\n  - {name: a, source: x.mp4, sink: a.avi2}", "unknown output extension"),
    ],
)  # fmt: skip
def test_bad_files_fail_with_one_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "cams.yaml"
    path.write_text(body)
    with pytest.raises(ServeConfigError) as info:
        load_config(path, env={})
    assert message in str(info.value) and "\n" not in str(info.value) and "pw" not in str(info.value)


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "cams.ini").write_text("x")
    with pytest.raises(ServeConfigError, match="use .yaml, .yml or .toml"):
        load_config(tmp_path / "cams.ini")
    with pytest.raises(ServeConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
