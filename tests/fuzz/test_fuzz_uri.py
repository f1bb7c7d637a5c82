"""Property tests: source/sink parsing, redaction and option validation never fail with anything but their
typed errors, and a password never survives redaction (in the spec, its repr, the error or the CLI line)."""

from __future__ import annotations

import math
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pipelines.config import GuidanceCacheConfig, PipelineConfig, PipelineConfigError
from pipelines.dehazers import DehazerChoiceError, resolve_device
from pipelines.gap_filler import GapFillConfig, GapFillError
from stream.errors import BadUriError
from stream.reconnect import ReconnectPolicy
from stream.source import SourceOptions
from stream.uri import REDACTED, parse_sink, parse_source, redact

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# file:// and v4l2:// are left out: they name local paths, and with a '/' in the "password" what follows is
# a path, shown as such (test_local_kinds_drop_userinfo covers their userinfo)
SCHEMES = ["rtsp", "rtsps", "rtmp", "srt", "http", "https", "gopher", "RTSP", "ftp", ""]
URL_CHARS = st.characters(codec="utf-8", exclude_categories=("Cs",))
# Passwords people type: letters, digits, and the URL specials that break naive parsers
PASSWORD = st.text(alphabet=st.sampled_from("abcXYZ0189-_.~!$&'()*+,;=:@/?#%[] "), min_size=1, max_size=16)
HOSTS = st.sampled_from(["cam", "127.0.0.1", "[::1]", "cam.local:8554", "10.0.0.7:554", "h"])
PATHS = st.sampled_from(["", "/", "/live", "/ch1?subtype=0", "/a/b#frag", "/stream.m3u8"])


def url_with_password(scheme: str, user: str, password: str, host: str, path: str, encode: bool) -> str:
    secret = quote(password, safe="") if encode else password
    return f"{scheme}://{user}:{secret}@{host}{path}"


@FUZZ
@given(st.text(URL_CHARS, max_size=80))
def test_parse_source_only_raises_bad_uri(text: str) -> None:
    try:
        spec = parse_source(text)
    except BadUriError as exc:
        assert "\n" not in str(exc).strip()
        return
    assert spec.kind in {"file", "rtsp", "rtmp", "srt", "http", "hls", "v4l2", "pipe"}


@FUZZ
@given(st.text(URL_CHARS, max_size=80), st.one_of(st.none(), st.text(max_size=12)))
def test_parse_sink_only_raises_bad_uri(text: str, fmt: str | None) -> None:
    try:
        spec = parse_sink(text, fmt)
    except BadUriError:
        return
    assert spec.format


@FUZZ
@given(st.sampled_from(SCHEMES), st.sampled_from(["admin", "u", "op%40x"]), PASSWORD, HOSTS, PATHS, st.booleans())
def test_password_never_survives_redaction(scheme: str, user: str, password: str, host: str, path: str,
                                           encode: bool) -> None:  # fmt: skip
    secret = quote(password, safe="") if encode else password
    url = url_with_password(scheme, user, password, host, path, encode)
    # only meaningful when the secret is not also spelled elsewhere in the URL
    assume(len(secret) >= 3 and url.count(secret) == 1 and secret not in REDACTED)
    assert secret not in redact(url)
    for parse in (parse_source, parse_sink):
        try:
            spec = parse(url)
        except BadUriError as exc:
            assert secret not in str(exc)
            continue
        assert secret not in str(spec) and secret not in repr(spec) and secret not in spec.display


def test_local_kinds_drop_userinfo() -> None:
    spec = parse_source("v4l2://admin:000secret@video0")
    assert "000secret" not in str(spec) + repr(spec) and spec.url == "video0"
    assert "000secret" not in redact("v4l2://admin:000secret@video0")


@FUZZ
@given(st.text(URL_CHARS, max_size=60))
def test_redact_is_total_and_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once


def _finite(*values: float | None) -> bool:
    return all(v is None or math.isfinite(v) for v in values)


FLOATS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32))
INTS = st.integers(min_value=-(2**40), max_value=2**40)


@FUZZ
@given(INTS, INTS, FLOATS, FLOATS, st.one_of(st.none(), INTS), FLOATS)
def test_pipeline_config_accepts_only_sane_values(batch: int, depth: int, scale: float | None, duration: float | None,
                                                  max_frames: int | None, wait: float | None) -> None:  # fmt: skip
    kwargs = {"batch": batch, "queue_depth": depth, "scale": 1.0 if scale is None else scale,
              "max_duration_s": duration, "max_frames": max_frames, "batch_wait_s": 0.002 if wait is None else wait}
    try:
        config = PipelineConfig(**kwargs)  # type: ignore[arg-type]
    except PipelineConfigError:
        return
    assert config.batch >= 1 and config.queue_depth >= 1 and 0 < config.scale <= 1
    assert _finite(config.scale, config.max_duration_s, config.batch_wait_s, config.poll_s)
    assert config.max_duration_s is None or config.max_duration_s > 0
    assert config.batch_wait_s >= 0 and config.poll_s > 0


@FUZZ
@given(INTS, FLOATS, FLOATS, INTS)
def test_guidance_config_accepts_only_sane_values(every: int, ema: float | None, cut: float | None, thumb: int) -> None:
    try:
        config = GuidanceCacheConfig(refresh_every=every, ema_weight=0.5 if ema is None else ema,
                                     scene_cut_threshold=0.1 if cut is None else cut, thumbnail_px=thumb)  # fmt: skip
    except PipelineConfigError:
        return
    assert config.refresh_every >= 1 and 0 < config.ema_weight <= 1 and config.thumbnail_px >= 2
    assert math.isfinite(config.scene_cut_threshold) and config.scene_cut_threshold > 0


@FUZZ
@given(FLOATS, FLOATS, st.text(max_size=5))
def test_source_options_accept_only_sane_values(open_s: float | None, read_s: float | None, transport: str) -> None:
    try:
        options = SourceOptions(open_timeout_s=10.0 if open_s is None else open_s,
                                read_timeout_s=5.0 if read_s is None else read_s, rtsp_transport=transport)  # fmt: skip
    except ValueError:
        return
    assert options.open_timeout_s > 0 and options.read_timeout_s > 0
    assert math.isfinite(options.open_timeout_s) and math.isfinite(options.read_timeout_s)


@FUZZ
@given(FLOATS, FLOATS)
def test_gap_fill_config_accepts_only_sane_values(after: float | None, limit: float | None) -> None:
    try:
        config = GapFillConfig(after_s=1.0 if after is None else after, max_fill_s=limit)
    except GapFillError:
        return
    assert config.after_s > 0 and math.isfinite(config.after_s)
    assert config.max_fill_s is None or (config.max_fill_s > 0 and math.isfinite(config.max_fill_s))


POSITIVE = st.floats(min_value=1e-6, max_value=1e6)


@FUZZ
@given(st.integers(min_value=1, max_value=10**6), POSITIVE, POSITIVE, st.floats(min_value=0.1, max_value=100.0))
def test_backoff_is_bounded_for_camera_outages_of_any_length(attempt: int, initial: float, cap: float,
                                                              multiplier: float) -> None:  # fmt: skip
    """A camera down for days keeps getting retried: the delay never overflows and never exceeds the cap."""
    policy = ReconnectPolicy(initial_s=initial, cap_s=cap, multiplier=multiplier)
    delay = policy.delay_s(attempt)
    assert math.isfinite(delay) and 0 <= delay <= cap * (1 + policy.jitter)


@FUZZ
@given(st.text(URL_CHARS, max_size=20))
def test_device_names_only_raise_the_typed_error(name: str) -> None:
    try:
        device = resolve_device(name)
    except DehazerChoiceError:
        return
    assert device.type in ("cpu", "cuda")


@pytest.mark.parametrize("password", ["p@ss/word", "a:b@c", "x#y?z", "%40%2F", "hunter2"])
def test_cli_line_never_shows_the_password(password: str) -> None:
    """The one-line CLI error for an unusable URL (closed port) keeps the password out, raw or encoded."""
    from click.testing import CliRunner

    from cli import main

    for encode in (False, True):
        url = url_with_password("rtsp", "admin", password, "127.0.0.1:9", "/cam", encode)
        result = CliRunner().invoke(main, ["dehaze", url, "-o", "out_never_written.mp4"])
        assert result.exit_code == 2
        secret = quote(password, safe="") if encode else password
        assert secret not in result.output, result.output
