"""Decode -> encode passthrough keeps frame count, PTS, duration, audio; outputs checked with ffprobe."""

from __future__ import annotations

import time
from pathlib import Path

import av
import pytest
import stream_media

from stream.encoder import EncoderConfig
from stream.sink import PART_SUFFIX, open_sink
from stream.source import open_source

FAST = EncoderConfig(preset="superfast")  # fastest preset that still uses High-profile tools
PTS_TOLERANCE_S = 0.0011  # ffprobe prints ms-rounded times for ms time bases
AAC_PRIMING_S = 1024 / 44100  # one AAC frame at the lowest rate used here
CLIPS = ["bikes", pytest.param("bigbuckbunny", marks=pytest.mark.slow), "vfr", "odd", "10bit", "rotated", "audio"]


def passthrough(src: Path, out: Path, config: EncoderConfig = FAST, fmt: str | None = None) -> None:
    with open_source(src) as source, open_sink(out, source.info, config, audio_from=source.info, fmt=fmt) as sink:
        for frame in source:
            sink.write(frame)
        sink.write_end(source.end)


def _video(streams: list[dict]) -> dict:
    return next(s for s in streams if s["codec_type"] == "video")


@pytest.mark.parametrize("name", CLIPS)
def test_passthrough_mp4_keeps_frames_pts_duration(name: str, clips: dict[str, Path], tmp_path: Path) -> None:
    src, out = clips[name], tmp_path / f"{name}.mp4"
    passthrough(src, out)
    assert out.exists() and not Path(str(out) + PART_SUFFIX).exists()

    src_streams, out_streams = stream_media.probe_streams(src), stream_media.probe_streams(out)
    assert len(out_streams) == len(src_streams)
    v_in, v_out = _video(src_streams), _video(out_streams)
    assert v_out["nb_read_frames"] == v_in["nb_read_frames"]
    assert v_out["codec_name"] == "h264" and v_out["pix_fmt"] == "yuv420p" and v_out["profile"] == "High"
    assert (v_out["color_space"], v_out["color_transfer"], v_out["color_primaries"]) == ("bt709",) * 3
    assert v_out["color_range"] == "tv"
    assert (int(v_out["width"]), int(v_out["height"])) == (
        int(v_in["width"]) + int(v_in["width"]) % 2,
        int(v_in["height"]) + int(v_in["height"]) % 2,
    )

    times_in, times_out = stream_media.probe_frame_times(src), stream_media.probe_frame_times(out)
    assert len(times_out) == len(times_in)
    # Fragmented MP4 tracks start at 0 (no edit list): AAC priming (-1024 samples) shifts the whole file
    # and stretches the first frame; A/V stay in sync. Without audio the PTS are identical.
    offset = times_out[1] - times_in[1]
    assert 0 <= offset <= (AAC_PRIMING_S if name in ("audio", "bigbuckbunny") else PTS_TOLERANCE_S)
    assert times_out[0] == times_in[0] == 0
    assert max(abs(a + offset - b) for a, b in zip(times_in[1:], times_out[1:])) <= PTS_TOLERANCE_S
    if name != "vfr":  # a VFR file's duration depends on how each muxer guesses its last frame's length
        duration_in, duration_out = float(v_in.get("duration", times_in[-1])), float(v_out["duration"])
        assert abs(duration_out - duration_in) <= 1 / 25 + PTS_TOLERANCE_S
    assert b"moof" in out.read_bytes()  # fragmented
    if any(st["codec_type"] == "audio" for st in src_streams):  # audio stream-copied, every packet
        assert stream_media.probe_packets(out) == stream_media.probe_packets(src)


def test_vfr_spacing_survives(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "vfr.mkv"
    passthrough(clips["vfr"], out)
    times_in, times_out = stream_media.probe_frame_times(clips["vfr"]), stream_media.probe_frame_times(out)
    gaps = {round(b - a, 3) for a, b in zip(times_in, times_in[1:])}
    assert len(gaps) >= 2  # the clip really is VFR
    assert len(times_out) == len(times_in) == 16
    assert max(abs(a - b) for a, b in zip(times_in, times_out)) <= PTS_TOLERANCE_S


def test_mkv_shifts_all_streams_together_for_aac_priming(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "audio.mkv"
    passthrough(clips["audio"], out)
    times_in, times_out = stream_media.probe_frame_times(clips["audio"]), stream_media.probe_frame_times(out)
    assert len(times_in) == len(times_out) == 25
    offsets = [b - a for a, b in zip(times_in, times_out)]
    assert 0 <= offsets[0] <= AAC_PRIMING_S  # Matroska cannot start below 0 either
    assert max(offsets) - min(offsets) <= PTS_TOLERANCE_S  # one constant shift: spacing and A/V sync kept
    audio_out = stream_media.probe_frame_times(out, "a:0")
    assert abs(audio_out[0]) <= PTS_TOLERANCE_S  # the priming packet now sits at 0, video moved with it


def test_short_clip_audio_outlives_the_input(clips: dict[str, Path], tmp_path: Path) -> None:
    """A clip shorter than the queue is fully read (and its container closed) before the sink opens."""
    with open_source(clips["short_audio"]) as source:
        deadline = time.monotonic() + 10
        while source.stats.state != "ended" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert source.stats.state == "ended"
        out = tmp_path / "short.mkv"
        with open_sink(out, source.info, FAST, audio_from=source.info) as sink:
            for frame in source:
                sink.write(frame)
            sink.write_end(source.end)
    audio = [s for s in stream_media.probe_streams(out) if s["codec_type"] == "audio"]
    assert len(audio) == 1 and stream_media.probe_packets(out) == stream_media.probe_packets(clips["short_audio"])


def test_rotation_and_10bit_info(clips: dict[str, Path], tmp_path: Path) -> None:
    with open_source(clips["rotated"]) as source:
        assert source.info.rotation == 90
    out = tmp_path / "rot.mp4"
    passthrough(clips["rotated"], out)
    with av.open(str(out)) as container:
        assert next(container.decode(video=0)).rotation == 90
    with open_source(clips["10bit"]) as source:
        assert source.info.pix_fmt == "yuv420p10le"
        frame = next(iter(source))
        assert frame.data.dtype.name == "uint8" and frame.data.shape == (64, 96, 3)


@pytest.mark.parametrize(("out_name", "muxer"), [("x.mkv", "matroska"), ("x.ts", "mpegts"), ("x.nut", "nut")])
def test_other_containers(clips: dict[str, Path], tmp_path: Path, out_name: str, muxer: str) -> None:
    out = tmp_path / out_name
    passthrough(clips["audio"], out)
    with av.open(str(out)) as container:
        assert muxer in container.format.name
    assert _video(stream_media.probe_streams(out))["nb_read_frames"] == "25"


def test_segmented_recording_keyframe_aligned(clips: dict[str, Path], tmp_path: Path) -> None:
    pattern = tmp_path / "cam_%05d.mp4"
    passthrough(clips["bikes"], pattern, EncoderConfig(preset="superfast", gop_s=1.0, segment_time_s=2.0))
    parts = sorted(tmp_path.glob("cam_*.mp4"))
    assert len(parts) == 5  # 10 s in 2 s segments
    counts = [int(_video(stream_media.probe_streams(p))["nb_read_frames"]) for p in parts]
    assert sum(counts) == 250
    for part in parts:  # every segment starts on a keyframe, so each plays on its own
        with av.open(str(part)) as container:
            first = next(container.demux(video=0))
            assert first.is_keyframe


def test_hls_output(clips: dict[str, Path], tmp_path: Path) -> None:
    playlist = tmp_path / "live" / "index.m3u8"
    playlist.parent.mkdir()
    passthrough(clips["bikes"], playlist)
    text = playlist.read_text()
    assert "#EXTINF" in text and "#EXT-X-ENDLIST" in text
    assert _video(stream_media.probe_streams(playlist))["nb_read_frames"] == "250"


def test_y4m_drops_audio_with_one_warning(
    clips: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "x.y4m"
    passthrough(clips["audio"], out)
    assert len([r for r in caplog.records if "cannot carry audio" in r.getMessage()]) == 1
    streams = stream_media.probe_streams(out)
    assert len(streams) == 1 and streams[0]["nb_read_frames"] == "25"


@pytest.mark.parametrize(
    ("config", "out_name", "codec", "tag"),
    [
        (EncoderConfig(codec="libx265", preset="ultrafast"), "hevc.mp4", "hevc", "hvc1"),
        (EncoderConfig(low_latency=True, preset="superfast"), "ll.ts", "h264", None),
    ],
)
def test_encoder_variants(
    clips: dict[str, Path], tmp_path: Path, config: EncoderConfig, out_name: str, codec: str, tag: str | None
) -> None:
    out = tmp_path / out_name
    passthrough(clips["audio"], out, config)
    video = _video(stream_media.probe_streams(out))
    assert video["codec_name"] == codec and video["nb_read_frames"] == "25"
    if tag is not None:
        assert video["codec_tag_string"] == tag
    if config.low_latency:
        assert int(video["has_b_frames"]) == 0


def test_bitrate_mode(clips: dict[str, Path], tmp_path: Path) -> None:
    requested = 200_000
    out = tmp_path / "cbr.mkv"
    passthrough(clips["bikes"], out, EncoderConfig(bitrate=requested, preset="superfast"))
    actual = out.stat().st_size * 8 / 10.0  # bikes is 10 s
    assert 0.5 * requested < actual < 1.5 * requested
