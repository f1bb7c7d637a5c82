"""The CI variant of scripts/soak.py: 60 s of RTSP camera -> dcp -> file, failing on RSS growth or latency drift.

60 s rather than 120 s keeps the reliability suite near its 3-minute CI budget; the 30-minute figures are in
docs/reliability.md (``python scripts/soak.py --duration 1800``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import reliability_media as media

SOAK_S = 60
SAMPLE_EVERY_S = 2
WARMUP_S = 20
CAMERA_FPS = 25
# A 40-s window cannot resolve the 30-minute limit (1 MB/min): the allocators' warm-up alone moves RSS by about
# 1 MB in the first minute, then it stays flat (docs/reliability.md). 5 MB/min still fails any leak of about
# 3.5 KB per frame or more (a leaked 640x360 frame is 690 KB).
CI_MAX_RSS_MB_PER_MIN = 5.0


def test_theil_sen_is_robust_to_outliers() -> None:
    sys.path.insert(0, str(media.REPO / "scripts"))
    try:
        from soak import theil_sen_slope
    finally:
        sys.path.remove(str(media.REPO / "scripts"))
    x = [float(i) for i in range(20)]
    flat = [100.0] * 20
    flat[7] = 900.0  # one GC pause / page-in spike
    assert theil_sen_slope(x, flat) == 0.0
    assert theil_sen_slope(x, [2.0 * v + 1 for v in x]) == pytest.approx(2.0)


@pytest.mark.slow
@pytest.mark.rtsp
def test_soak_ci_variant(tmp_path: Path) -> None:
    report = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "scripts/soak.py", "--duration", str(SOAK_S), "--sample-every", str(SAMPLE_EVERY_S),
         "--warmup", str(WARMUP_S), "--max-rss-mb-per-min", str(CI_MAX_RSS_MB_PER_MIN), "--json", str(report)],
        check=False, cwd=media.REPO, capture_output=True, text=True, timeout=SOAK_S + 120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(report.read_text())
    assert summary["ok"] and not summary["failures"]
    assert summary["steady_samples"] >= (SOAK_S - WARMUP_S) // SAMPLE_EVERY_S - 2
    assert summary["rss_slope_mb_per_min"] <= CI_MAX_RSS_MB_PER_MIN
    assert summary["output_fps"] >= 0.5 * CAMERA_FPS
    assert summary["frames_out"] >= 0.5 * CAMERA_FPS * SOAK_S and summary["reconnects"] == 0
    assert all(s["latency_ms"] is None or s["latency_ms"] > 0 for s in summary["samples_detail"])
