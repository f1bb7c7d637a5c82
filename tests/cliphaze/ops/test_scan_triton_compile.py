"""The triton scan kernels compile with Triton's real code generator for Hopper (sm_90), no GPU needed.

The interpreter tests check the maths; this checks that the kernels lower to PTX and fit in registers
(scripts/compile_triton_scan.py, in a subprocess: the kernels must be imported without TRITON_INTERPRET).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "compile_triton_scan.py"


@pytest.mark.slow
def test_every_kernel_variant_compiles_for_sm90_without_spilling() -> None:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPT.parents[1]), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, str(SCRIPT), "--arch", "90"], capture_output=True, text=True, env=env,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [line for line in run.stdout.splitlines() if "registers" in line]
    assert len(lines) == 8, run.stdout
