"""Bad input through the ``cliphaze`` command: one clear line, exit code 2, no traceback, nothing written.

Every case of issue 8's "bad input" list; the table in docs/reliability.md names these tests.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import reliability_media as media
from click.testing import CliRunner

from cli import main

EXIT_BAD_INPUT = 2
REFUSED_FAST_S = 3.0  # a closed port must be reported at once, not after the 10 s open deadline
SECRET = "hunter2-Secret"


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout + result.stderr


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_one_line_exit_2(code: int, text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert code == EXIT_BAD_INPUT, text
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    assert "Traceback" not in text
    return lines[0]


def assert_nothing_written(folder: Path, before: set[str]) -> None:
    after = {p.name for p in folder.iterdir()}
    assert after == before, f"left behind: {sorted(after - before)}"


# Input files: name -> (builder, expected words in the one line)
INPUTS: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "missing": (lambda d, g: d / "nope.mp4", "no such file"),
    "directory": (lambda d, g: d, "is a directory"),
    "text_as_mp4": (lambda d, g: _write(d / "notes.mp4", b"just some notes\n"), "not a video file"),
    "random_bytes_mp4": (lambda d, g: _write(d / "noise.mp4", os.urandom(20_000)), "not a video file"),
    "mp4_index_cut": (lambda d, g: media.cut_index(g, d / "cut.mp4"), "not a video file"),
    "audio_only": (lambda d, g: media.make_audio_only(d / "sound.m4a"), "no video stream"),
    "zero_frames": (lambda d, g: media.make_zero_frames(d / "empty.mkv"), "no video frames"),
    "image_to_dehaze": (lambda d, g: media.make_png(d / "still.png"), "is an image"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(INPUTS))
def test_bad_input_file(case: str, tmp_path: Path, good_mp4: Path) -> None:
    build, words = INPUTS[case]
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = build(inputs, good_mp4)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, text = cli("dehaze", str(source), "-o", str(out_dir / "o.mp4"), "--model", "none")
    assert words in assert_one_line_exit_2(code, text)
    assert_nothing_written(out_dir, set())


def test_video_given_to_image(tmp_path: Path, good_mp4: Path) -> None:
    code, text = cli("image", str(good_mp4), "-o", str(tmp_path / "o.png"), "--model", "dcp")
    assert "not an image" in assert_one_line_exit_2(code, text)
    assert not (tmp_path / "o.png").exists()


def test_output_identical_to_input_is_refused_and_input_untouched(tmp_path: Path, good_mp4: Path) -> None:
    source = tmp_path / "clip.mp4"
    source.write_bytes(good_mp4.read_bytes())
    before = source.read_bytes()
    for output in (str(source), str(tmp_path / "." / "clip.mp4")):
        code, text = cli("dehaze", str(source), "-o", output, "--model", "none")
        assert "is the input file" in assert_one_line_exit_2(code, text)
    assert source.read_bytes() == before
    assert_nothing_written(tmp_path, {"clip.mp4"})


@pytest.mark.parametrize(
    ("output", "words"),
    [
        ("missing_dir/o.mp4", "does not exist"),
        ("a_file/o.mp4", "does not exist"),
        ("existing_dir.mp4", "is a directory"),
        ("o.xyz", "unknown output extension"),
        ("o", "unknown output extension"),
        ("gopher://host/o", "unsupported output scheme"),
    ],
)
def test_bad_output(output: str, words: str, tmp_path: Path, good_mp4: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "existing_dir.mp4").mkdir()
    before = {p.name for p in tmp_path.iterdir()}
    target = output if "://" in output else str(tmp_path / output)
    code, text = cli("dehaze", str(good_mp4), "-o", target, "--model", "none")
    assert words in assert_one_line_exit_2(code, text)
    assert_nothing_written(tmp_path, before)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: chmod cannot make a folder unwritable")
def test_unwritable_output_folder(tmp_path: Path, good_mp4: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, text = cli("dehaze", str(good_mp4), "-o", str(locked / "o.mp4"), "--model", "none")
        assert "not writable" in assert_one_line_exit_2(code, text)
    finally:
        locked.chmod(0o700)


def test_unwritable_output_path_as_root_too(tmp_path: Path, good_mp4: Path) -> None:
    """/proc refuses new files even to root: the error comes from FFmpeg's open, still one line."""
    code, text = cli("dehaze", str(good_mp4), "-o", "/proc/cliphaze_out.mp4", "--model", "none")
    assert "cannot" in assert_one_line_exit_2(code, text)
    assert not Path("/proc/cliphaze_out.mp4.part").exists()


@pytest.mark.parametrize("source", ["gopher://host/x", "rtsp://", "rtsp://host:notaport/x", "ftp://u:p@h/x"])
def test_invalid_url(source: str, tmp_path: Path) -> None:
    code, text = cli("dehaze", source, "-o", str(tmp_path / "o.mp4"))
    line = assert_one_line_exit_2(code, text)
    assert "u:p@" not in line
    assert_nothing_written(tmp_path, set())


def test_unreachable_rtsp_host_answers_fast_without_password(tmp_path: Path) -> None:
    url = f"rtsp://admin:{SECRET}@127.0.0.1:{closed_port()}/cam"
    started = time.monotonic()
    code, text = cli("dehaze", url, "-o", str(tmp_path / "o.mp4"))
    assert time.monotonic() - started < REFUSED_FAST_S
    assert "cannot connect" in assert_one_line_exit_2(code, text)
    assert SECRET not in text and "admin:***@" in text
    code, text = cli("-vv", "dehaze", url, "-o", str(tmp_path / "o.mp4"))  # debug log with the traceback
    assert code == EXIT_BAD_INPUT and SECRET not in text
    assert_nothing_written(tmp_path, set())


@pytest.mark.rtsp
def test_rtsp_wrong_credentials(tmp_path: Path, rtsp_camera) -> None:
    url = rtsp_camera.secure_url("viewer", SECRET)
    code, text = cli("dehaze", url, "-o", str(tmp_path / "o.mp4"), "--model", "none")
    assert "authentication failed" in assert_one_line_exit_2(code, text)
    assert SECRET not in text
    code, text = cli("-vv", "dehaze", url, "-o", str(tmp_path / "o.mp4"), "--model", "none")
    assert code == EXIT_BAD_INPUT and SECRET not in text and "Traceback" in text  # -vv logs it, scrubbed
    env = {"CLIPHAZE_RTSP_USER": "viewer", "CLIPHAZE_RTSP_PASSWORD": SECRET}
    bare = f"rtsp://127.0.0.1:{rtsp_camera.port + 1}/secure"
    code, text = cli("-vv", "dehaze", bare, "-o", str(tmp_path / "o.mp4"), "--model", "none", env=env)
    assert code == EXIT_BAD_INPUT and SECRET not in text
    assert_nothing_written(tmp_path, set())


# --- weights ---------------------------------------------------------------------------------------------


def _weights(case: str, folder: Path, bundle: Path, marker: Path) -> Path:
    if case == "corrupt":
        return _write(folder / "corrupt.safetensors", os.urandom(4096))
    if case == "truncated":
        data = bundle.read_bytes()
        return _write(folder / "truncated.safetensors", data[: len(data) // 2])
    if case == "other_variant":
        return media.rewrite_bundle(bundle, folder / "other.safetensors", net_variant="cliphaze-t")
    if case == "pickle_pt":
        return media.make_pickle_weights(folder / "evil.pt", marker)
    return media.make_pickle_weights(folder / "evil.safetensors", marker)  # a pickle under the trusted name


@pytest.mark.parametrize("case", ["corrupt", "truncated", "other_variant", "pickle_pt", "pickle_named_safetensors"])
def test_bad_weights_refused_and_never_executed(case: str, tmp_path: Path, good_mp4: Path, tiny_bundle: Path) -> None:
    marker = tmp_path / "payload_ran"
    weights = _weights(case, tmp_path, tiny_bundle, marker)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, text = cli("dehaze", str(good_mp4), "-o", str(out_dir / "o.mp4"), "--weights", str(weights))
    line = assert_one_line_exit_2(code, text)
    assert str(weights.name) in line
    assert not marker.exists(), "the pickle payload ran"
    assert_nothing_written(out_dir, set())
    code, text = cli("image", str(media.make_png(tmp_path / "i.png")), "-o", str(out_dir / "o.png"),
                     "--weights", str(weights))  # fmt: skip
    assert_one_line_exit_2(code, text)
    assert not marker.exists()


@pytest.mark.slow
def test_good_tiny_bundle_is_accepted(tmp_path: Path, good_mp4: Path, tiny_bundle: Path) -> None:
    """The control for the weights cases above: the unmodified bundle runs."""
    out = tmp_path / "o.mp4"
    code, text = cli("dehaze", str(good_mp4), "-o", str(out), "--weights", str(tiny_bundle), "--max-frames", "2")
    assert code == 0, text
    assert media.count_frames(out) == 2


# --- absurd options --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        ("--batch", "-1"),
        ("--batch", "0"),
        ("--scale", "0"),
        ("--scale", "-0.5"),
        ("--scale", "7"),
        ("--device", "tpu"),
        ("--device", "cuda:99"),
        ("--device", "cpu; rm -rf /"),
        ("--guidance-every", "0"),
        ("--guidance-ema", "0"),
        ("--crf", "-5"),
        ("--crf", "0"),
        ("--crf", "99"),
        ("--gop", "0"),
        ("--gop", "60"),
        ("--max-frames", "-3"),
        ("--duration", "0"),
        ("--codec", "divx"),
        ("--format", "bogus"),
        ("--precision", "fp8"),
        ("--model", "magic"),
        ("--threads", "-2"),
        ("--metrics-port", "70000"),
    ],
)
def test_absurd_options(options: tuple[str, str], tmp_path: Path, good_mp4: Path) -> None:
    code, text = cli("dehaze", str(good_mp4), "-o", str(tmp_path / "o.mp4"), *options)
    assert code == EXIT_BAD_INPUT, text
    assert "Traceback" not in text
    assert text.rstrip().splitlines()[-1].startswith("Error: ")
    assert_nothing_written(tmp_path, set())


@pytest.mark.parametrize("options", [("--scale", "0"), ("--device", "tpu"), ("--model", "magic")])
def test_absurd_image_options(options: tuple[str, str], tmp_path: Path) -> None:
    png = media.make_png(tmp_path / "i.png")
    code, text = cli("image", str(png), "-o", str(tmp_path / "o.png"), *options)
    assert code == EXIT_BAD_INPUT and "Traceback" not in text
    assert not (tmp_path / "o.png").exists()
