"""Source details on real files (info, live resizing), probe (in and out of process), encoder selection."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import pytest

from stream.encoder import EncoderConfig, nvenc_usable, select_codec
from stream.errors import SourceOpenError
from stream.probe import info_from_json, info_to_json, probe
from stream.source import SourceOptions, open_source


def test_file_info(clips: dict[str, Path]) -> None:
    with open_source(clips["bigbuckbunny"]) as src:
        info = src.info
        first = next(iter(src))
    assert (info.width, info.height, info.fps, info.codec) == (1280, 720, Fraction(25), "h264")
    assert info.frame_count == 132 and info.duration_s == pytest.approx(5.28) and not info.is_live
    assert len(info.audio) == 1 and info.audio[0].codec == "aac" and info.audio[0].sample_rate == 48000
    assert "hunter" not in info.uri
    assert first.data.shape == (720, 1280, 3) and first.data.flags["C_CONTIGUOUS"] and first.index == 0


def test_live_output_size_is_fixed(clips: dict[str, Path]) -> None:
    options = SourceOptions(live=True, live_queue_size=64, output_size=(48, 32))
    with open_source(clips["audio"], options) as src:
        assert (src.info.width, src.info.height) == (48, 32)
        frame = next(iter(src))
    assert frame.data.shape == (32, 48, 3)


def test_probe_in_process_and_isolated(clips: dict[str, Path]) -> None:
    direct = probe(str(clips["audio"]), 5.0)
    isolated = probe(str(clips["audio"]), 5.0, isolate=True)
    assert isolated == direct  # templates are excluded from equality
    assert isolated.audio[0].template is None and isolated.audio[0].codec == "aac"
    assert info_from_json(info_to_json(direct)) == direct


def test_probe_isolated_reports_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceOpenError, match="no such file"):
        probe(str(tmp_path / "missing.mp4"), 5.0, isolate=True)


def test_nvenc_falls_back_to_libx264_with_a_log(caplog: pytest.LogCaptureFixture) -> None:
    if nvenc_usable("h264_nvenc"):
        pytest.skip("this machine has a working NVENC")
    with caplog.at_level(logging.WARNING, logger="stream.encoder"):
        assert select_codec("h264_nvenc") == "libx264"
    assert any("falling back to libx264" in r.getMessage() for r in caplog.records)
    assert select_codec("auto") == "libx264"
    assert select_codec("libx265") == "libx265"


@pytest.mark.parametrize("kwargs", [{"gop_s": 3.0}, {"gop_s": 0}, {"codec": "mjpeg"}, {"segment_time_s": -1}])
def test_encoder_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        EncoderConfig(**kwargs)
