"""Caches go to the user's cache directory: an installed package is never written to (issue 16).

A numba cache written into ``site-packages/cliphaze/`` outlived ``pip install -e .`` as an empty directory that
other working directories then imported as a namespace package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NUMBA_CACHE_FILES = ("*.nbi", "*.nbc")


def _run(code: str, *, cwd: Path, pythonpath: Path, env_changes: dict[str, str | None]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    for name, value in env_changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    env["PYTHONPATH"] = str(pythonpath)
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600, check=True)  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


def _cache_files(root: Path) -> list[Path]:
    return sorted(p for pattern in NUMBA_CACHE_FILES for p in root.rglob(pattern))


@pytest.mark.slow
def test_numba_kernels_of_an_installed_copy_leave_nothing_in_the_package(tmp_path: Path) -> None:
    # What a non-editable install puts in site-packages: a copy of the package, away from the checkout.
    site = tmp_path / "site-packages"
    shutil.copytree(ROOT / "cliphaze", site / "cliphaze",
                    ignore=shutil.ignore_patterns("__pycache__", "*.safetensors", "assets"))  # fmt: skip
    work = tmp_path / "elsewhere"
    work.mkdir()
    probe = (
        "import json, cliphaze\n"
        "from cliphaze.baselines import dcp_cpu\n"
        "print(json.dumps({'kernels': dcp_cpu.get_kernels() is not None, 'package': cliphaze.__file__}))\n"
    )
    out = _run(probe, cwd=work, pythonpath=site, env_changes={"XDG_CACHE_HOME": str(tmp_path / "cache")})

    assert out["kernels"]
    assert Path(out["package"]).is_relative_to(site)  # the copy was imported, not the checkout
    assert _cache_files(site) == []
    cached = _cache_files(tmp_path / "cache" / "cliphaze" / "numba")
    assert cached
    # The next process loads every kernel from the cache: a miss compiles again and adds an entry (the estimate
    # kernels, closures over other kernels, missed on every start and cost 17 s each time).
    _run(probe, cwd=work, pythonpath=site, env_changes={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert _cache_files(tmp_path / "cache" / "cliphaze" / "numba") == cached


def test_the_scan_kernels_cache_in_the_user_cache_dir_and_a_users_numba_cache_dir_wins(tmp_path: Path) -> None:
    probe = (
        "import json, numba\n"
        "from cliphaze.ops.scan import cpu_kernels\n"
        "print(json.dumps({'cache_dir': numba.config.CACHE_DIR}))\n"
    )
    default = _run(probe, cwd=tmp_path, pythonpath=ROOT, env_changes={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert Path(default["cache_dir"]) == tmp_path / "cache" / "cliphaze" / "numba"

    mine = str(tmp_path / "mine")
    users = _run(probe, cwd=tmp_path, pythonpath=ROOT, env_changes={"NUMBA_CACHE_DIR": mine})
    assert users["cache_dir"] == mine
