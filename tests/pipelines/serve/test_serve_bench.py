"""``cliphaze bench serve`` runs the real engine on N cameras and stops at the first N below real time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main


def test_search_stops_at_the_first_count_below_real_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.serve.bench as serve_bench

    seen: list[int] = []

    def fake_run(options: object, bench: object, clip: Path, folder: Path, cameras: int) -> dict[str, object]:
        seen.append(cameras)
        return {"cameras": cameras, "per_camera_fps": 100.0 / cameras, "aggregate_fps": 100.0, "latency_ms_p95": 1.0,
                "mean_batch": 1.0, "cpu_ms_per_frame": 10.0, "real_time": 100.0 / cameras >= 25}  # fmt: skip

    monkeypatch.setattr(serve_bench, "run_cameras", fake_run)
    lines: list[str] = []
    config = serve_bench.ServeBenchConfig(model="none", width=32, height=32, seconds=0.2, max_cameras=9)
    results = serve_bench.run_serve_benchmark(config, serve_bench.ServeOptions(device="cpu"), report=lines.append)
    assert seen == [1, 1, 2, 3, 4, 5]  # warm-up, then N = 1.. until 5 falls below 25 fps each
    assert results["cameras_real_time"] == 4 and "real time: 4 camera(s) of 32x32 at 25 fps (none)" in lines
    assert results["cpu_bound_cameras"] == int(os.cpu_count() * 1000 / (10.0 * 25))


def test_bench_serve_counts_cameras_kept_in_real_time(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "serve", "--model", "none", "--resolution", "64x48", "--fps", "1",
                                       "--seconds", "4", "--max-cameras", "2", "--device", "cpu", "--json",
                                       str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())
    assert [r["real_time"] for r in results["rows"]] == [True, True] and results["cameras_real_time"] == 2
    assert all(r["frames"] == 4 * r["cameras"] for r in results["rows"])
