"""Importing the packages is light: no mamba_ssm, triton, open_clip or numba until they are used."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

HEAVY = ("mamba_ssm", "triton", "open_clip", "numba")
TOP_LEVEL = ("stream", "cliphaze", "pipelines", "cli")
# Library modules that must stay light too (the network is built without guidance models or kernels).
CLIPHAZE_MODULES = (
    "cliphaze.config",
    "cliphaze.model",
    "cliphaze.factory",
    "cliphaze.checkpoint",
    "cliphaze.complexity",
    "cliphaze.ops",
    "cliphaze.layers.tramba",
)


def _loaded_heavy(modules: list[str]) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_imports_load_no_heavy_dependency() -> None:
    present = [m for m in TOP_LEVEL if importlib.util.find_spec(m) is not None]
    assert "cliphaze" in present and "stream" in present
    assert _loaded_heavy(present + list(CLIPHAZE_MODULES)) == []


def test_the_probe_would_notice_a_heavy_import() -> None:
    assert _loaded_heavy(["cliphaze", "numba"]) == ["numba"]
