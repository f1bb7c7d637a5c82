"""The serving engine on file cameras (fast, no RTSP): outputs, /cameras, /healthz, /metrics, a camera whose
output fails restarts alone, reload diffs, and the command's one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from cliphaze.baselines.dcp import DarkChannelDehazer
from cliphaze.baselines.none import PassthroughDehazer
from pipelines.serve.batcher import BatchConfig, CrossCameraBatcher
from pipelines.serve.camera import CameraWorker
from pipelines.serve.config import CameraConfig, ServeConfig
from pipelines.serve.engine import ServeEngine, ServeOptions, serve, wait_until
from stream.reconnect import ReconnectPolicy

FRAMES = 20


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "clip.mp4"
    lavfi = ["-f", "lavfi", "-i", "testsrc=size=96x64:rate=25", "-frames:v", str(FRAMES)]
    encode = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    subprocess.run(["ffmpeg", "-v", "error", "-y", *lavfi, *encode, str(path)], check=True, timeout=60)
    return path


def _frames(path: Path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames", "-of", "csv=p=0", str(path)], capture_output=True, text=True,
                         check=True, timeout=60)  # fmt: skip
    return int(out.stdout.strip())


def test_file_cameras_run_to_the_end_with_status_and_metrics(clip: Path, tmp_path: Path) -> None:
    config = tmp_path / "cams.toml"
    config.write_text("".join(f'[[cameras]]\nname = "cam{i}"\nsource = "{clip}"\nsink = "out{i}.mkv"\n'
                              f'model = "{model}"\ndensity_log = "fog{i}.jsonl"\n'
                              for i, model in enumerate(["dcp", "dcp", "none"])))  # fmt: skip
    stop, reload = threading.Event(), threading.Event()
    final = serve(config, ServeOptions(device="cpu", http_port=None), stop, reload)
    assert sorted(c["name"] for c in final) == ["cam0", "cam1", "cam2"]
    assert all(c["state"] == "finished" and c["frames_out"] == FRAMES for c in final), final
    for i in range(3):
        assert _frames(tmp_path / f"out{i}.mkv") == FRAMES
        records = [json.loads(line) for line in (tmp_path / f"fog{i}.jsonl").read_text().splitlines()]
        if i < 2:  # dcp measures haze density; "none" has none to log
            assert len(records) == FRAMES and all(0.0 <= r["density"] <= 1.0 for r in records)
        else:
            assert records == []


def test_http_endpoint_reports_each_camera(clip: Path, tmp_path: Path) -> None:
    engine = ServeEngine(ServeOptions(device="cpu", http_port=None))
    from pipelines.serve.http import StatusProvider, StatusServer

    server = StatusServer(StatusProvider(engine.cameras, engine.healthy, engine.metrics.text), 0)
    try:
        cams = ServeConfig((CameraConfig("a", str(clip), str(tmp_path / "a.mkv")),
                            CameraConfig("b", str(clip), str(tmp_path / "b.mkv"), model="none")))  # fmt: skip
        engine.apply(cams)
        assert wait_until(engine.all_finished, 60)
        url = f"http://127.0.0.1:{server.port}"
        body = json.loads(urllib.request.urlopen(f"{url}/cameras", timeout=10).read())
        by_name = {c["name"]: c for c in body["cameras"]}
        assert by_name["a"]["frames_out"] == FRAMES and by_name["a"]["state"] == "finished"
        assert by_name["b"]["model"] == "none"
        metrics = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
        assert f'cliphaze_camera_frames_out_total{{camera="a"}} {float(FRAMES)}' in metrics
        assert 'cliphaze_batch_frames_total{model="dcp"}' in metrics
        with pytest.raises(urllib.error.HTTPError) as info:  # finished cameras deliver nothing
            urllib.request.urlopen(f"{url}/healthz?camera=a", timeout=10)
        assert info.value.code == 503
        assert urllib.request.urlopen(f"{url}/healthz", timeout=10).status == 200
        # reload: b changed (another model) restarts, a is unchanged, c is added
        changes = engine.apply(ServeConfig((cams.cameras[0], CameraConfig("b", str(clip), str(tmp_path / "b2.mkv")),
                                            CameraConfig("c", str(clip), str(tmp_path / "c.mkv")))))  # fmt: skip
        assert changes == {"added": ["c"], "removed": [], "changed": ["b"], "unchanged": ["a"]}
        assert wait_until(engine.all_finished, 60)
        assert _frames(tmp_path / "b2.mkv") == FRAMES and _frames(tmp_path / "c.mkv") == FRAMES
    finally:
        engine.stop()
        server.close()


def test_a_camera_whose_output_fails_restarts_alone(clip: Path, tmp_path: Path) -> None:
    batcher = CrossCameraBatcher(PassthroughDehazer("cpu"), BatchConfig())
    quick = ReconnectPolicy(initial_s=0.2, cap_s=0.5, jitter=0.0)
    missing = tmp_path / "not_yet"
    broken = CameraWorker(CameraConfig("broken", str(clip), str(missing / "out.mkv")), batcher, restart=quick).start()
    healthy = CameraWorker(CameraConfig("healthy", str(clip), str(tmp_path / "ok.mkv")), batcher, restart=quick).start()
    assert healthy.join(60) and healthy.status.snapshot()["state"] == "finished"
    assert wait_until(lambda: broken.status.restarts >= 2, 30)
    snap = broken.status.snapshot()
    assert snap["state"] == "restarting" and "does not exist" in snap["last_error"]
    missing.mkdir()  # the output comes back: the camera recovers on its next attempt
    assert broken.join(60) and broken.status.snapshot()["state"] == "finished"
    assert _frames(missing / "out.mkv") == FRAMES and healthy.status.restarts == 0
    batcher.close()


def test_cli_bad_config_and_missing_ray_are_one_line(clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:  # fmt: skip
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras:\n  - {name: a, source: x.mp4}\n")
    result = CliRunner().invoke(main, ["serve", str(bad)])
    assert result.exit_code == 2 and "'sink' is required" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    good = tmp_path / "good.yaml"
    good.write_text(f"cameras:\n  - {{name: a, source: {clip}, sink: a.mkv}}\n")
    result = CliRunner().invoke(main, ["serve", str(good), "--ray", f"127.0.0.1:{_free_port()}"])
    assert result.exit_code == 2 and "cannot reach the Ray cluster" in result.output  # at once, not after minutes
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [ray] extra were not installed
    result = CliRunner().invoke(main, ["serve", str(good), "--ray", "auto"])
    assert result.exit_code == 2 and "pip install 'cliphaze[ray]'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_camera_that_is_away_stops_promptly_and_writes_nothing(tmp_path: Path) -> None:
    """A live camera that never answers (connection refused): it keeps retrying on its own backoff, and a stop
    request closes it after the grace period instead of waiting for it."""
    from pipelines.serve.camera import STOP_GRACE_S

    batcher = CrossCameraBatcher(PassthroughDehazer("cpu"), BatchConfig())
    camera = CameraWorker(CameraConfig("away", "rtsp://127.0.0.1:9/cam", str(tmp_path / "away.mkv")), batcher).start()
    assert wait_until(lambda: camera.status.snapshot()["reconnects"] >= 1, 20)
    assert camera.status.snapshot()["state"] in ("starting", "reconnecting")
    camera.request_stop()
    assert camera.join(STOP_GRACE_S + 5) and camera.status.snapshot()["state"] == "stopped"
    assert not list(tmp_path.iterdir())  # no output was opened for a camera that never delivered
    batcher.close()


def test_a_camera_publishes_its_output_over_rtsp(clip: Path, tmp_path: Path) -> None:
    """The Frigate/go2rtc set-up: serve publishes each camera into an RTSP server (here PyAV's listener)."""
    import av

    from pipelines.serve.camera import RESTART_POLICY

    url = f"rtsp://127.0.0.1:{_free_port()}/driveway_dehazed"
    received: list[int | None] = []

    def listen() -> None:
        with av.open(url, options={"rtsp_flags": "listen", "listen_timeout": "30"}) as container:
            received.extend(frame.pts for frame in container.decode(video=0))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    batcher = CrossCameraBatcher(DarkChannelDehazer("cpu"), BatchConfig())
    quick = ReconnectPolicy(initial_s=0.2, cap_s=0.5, jitter=0.0)  # the listener may bind after our first try
    assert quick.initial_s < RESTART_POLICY.initial_s
    camera = CameraWorker(CameraConfig("driveway", str(clip), url), batcher, restart=quick).start()
    assert camera.join(60) and camera.status.snapshot()["state"] == "finished"
    listener.join(30)
    batcher.close()
    assert len(received) == FRAMES
    stamped = [p for p in received if p is not None]
    assert all(b > a for a, b in zip(stamped, stamped[1:]))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_reload_with_a_broken_file_keeps_the_running_cameras(clip: Path, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    from pipelines.serve.config import load_config
    from pipelines.serve.engine import reload_config

    config = tmp_path / "cams.yaml"
    config.write_text(f"cameras:\n  - {{name: a, source: {clip}, sink: a.mkv}}\n")
    engine = ServeEngine(ServeOptions(device="cpu", http_port=None))
    try:
        engine.apply(load_config(config))
        config.write_text("cameras:\n  - {name: a, source: [broken\n")
        reload_config(engine, config, load_config)
        assert [c["name"] for c in engine.cameras()] == ["a"]
        assert any("reload:" in r.message and "keeping the running cameras" in r.message for r in caplog.records)
        (tmp_path / "bogus.safetensors").write_bytes(b"not a bundle")  # parses, but the model cannot load
        config.write_text(f"cameras:\n  - {{name: a, source: {clip}, sink: a.mkv}}\n"
                          f"  - {{name: b, source: {clip}, sink: b.mkv, model: cliphaze, "
                          f"weights: bogus.safetensors}}\n")
        caplog.clear()
        reload_config(engine, config, load_config)
        assert [c["name"] for c in engine.cameras()] == ["a"]
        assert any("keeping the running cameras" in r.message for r in caplog.records)
        assert wait_until(engine.all_finished, 60)
    finally:
        engine.stop()
    assert _frames(tmp_path / "a.mkv") == FRAMES


def test_outputs_are_never_replaced_and_a_killed_runs_output_is_kept_unless_empty(tmp_path: Path) -> None:
    sink = tmp_path / "gate.mkv"
    worker = CameraWorker(CameraConfig("gate", "rtsp://cam/gate", str(sink)), batcher=None)  # type: ignore[arg-type]
    part = Path(str(sink) + ".part")
    part.write_bytes(b"\x1a\x45\xdf\xa3 a Matroska start")  # what a killed run left
    assert worker._sink_path(0) == str(sink)
    assert (tmp_path / "gate.crash1.mkv").read_bytes().startswith(b"\x1a\x45\xdf\xa3") and not part.exists()
    part.write_bytes(b"")  # killed before its first packet
    assert worker._sink_path(0) == str(sink)
    assert not part.exists() and not (tmp_path / "gate.crash2.mkv").exists()  # nothing worth a file
    sink.write_bytes(b"first run's output")
    assert worker._sink_path(1) == str(tmp_path / "gate.restart1.mkv")  # a restart never replaces an output
    (tmp_path / "gate.restart1.mkv").write_bytes(b"second run's output")
    # nor does a new worker (a reload that changed the camera, a Ray actor it moved to, the next serve process)
    assert worker._sink_path(0) == str(tmp_path / "gate.restart2.mkv")


def test_a_camera_whose_output_stops_is_blocked_or_stalled_not_running(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from pipelines.serve import camera as camera_module
    from pipelines.stats import FrameDone
    from stream.source import SourceStats

    status = camera_module.CameraStatus(CameraConfig("gate", "rtsp://cam/gate", "gate.mkv"))
    source = SourceStats("running", 10, 10, 0, 0, 0, 0, "", 0)
    status.source_stats = lambda: source
    status.frame(FrameDone(0, 0, 0.0, 20.0, None, 1, 1, 0, 25.0, ()), 0)
    assert status.snapshot()["state"] == "running"
    now = camera_module.time.monotonic()
    monkeypatch.setattr(camera_module.time, "monotonic", lambda: now + camera_module.OUTPUT_IDLE_S + 1)
    snap = status.snapshot()
    assert snap["state"] == "blocked" and snap["output_idle_s"] > camera_module.OUTPUT_IDLE_S  # source delivers
    source = dataclasses.replace(source, state="ended")
    assert status.snapshot()["state"] == "stalled"  # nothing moves
    source = dataclasses.replace(source, state="retrying")
    assert status.snapshot()["state"] == "reconnecting"  # the source's own verdict comes first


def test_a_camera_whose_output_stops_and_flows_again_is_logged_once_each_way(caplog: pytest.LogCaptureFixture) -> None:
    from pipelines.serve.camera import OutputWatch

    watch = OutputWatch()

    def states(*pairs: tuple[str, str]) -> list[dict[str, object]]:
        return [{"name": name, "state": state, "output_idle_s": 4.0} for name, state in pairs]

    with caplog.at_level("WARNING", logger="pipelines.serve.camera"):
        watch.check(states(("gate", "running"), ("yard", "running")))
        for _ in range(3):  # the main loop asks every second; the camera stays blocked
            watch.check(states(("gate", "blocked"), ("yard", "running")))
        watch.check(states(("gate", "running"), ("yard", "stalled")))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "camera gate: blocked, no output for 4.0 s (its source still delivers: the output or the dehazer holds it up)",
        "camera gate: output flowing again",
        "camera yard: stalled, no output for 4.0 s (neither its source nor its output moves)",
    ]
