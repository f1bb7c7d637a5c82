"""Import hygiene of cliphaze.ops: numba only once a CPU scan runs; never mamba_ssm or triton."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHECK = """
import json, sys
import torch
import cliphaze.ops as ops
before = {m: m in sys.modules for m in ("numba", "mamba_ssm", "triton")}
args = dict(u=torch.randn(1, 2, 5), delta=torch.randn(1, 2, 5), A=-torch.ones(2, 3),
            B=torch.randn(1, 3, 5), C=torch.randn(1, 3, 5))
ops.selective_scan(**args)
ops.available_backends("cpu")  # probing every backend for CPU tensors imports no triton either
after = {m: m in sys.modules for m in ("numba", "mamba_ssm", "triton")}
print(json.dumps({"before": before, "after": after}))
"""

NO_NUMBA = """
import json, sys
sys.modules["numba"] = None  # makes "import numba" raise ImportError
import torch
import cliphaze.ops as ops
ok, reason = ops.available_backends()["cpu_fused"]
chosen = ops.resolve_backend("auto", "cpu")
out = ops.selective_scan(torch.randn(1, 2, 5), torch.randn(1, 2, 5), -torch.ones(2, 3), torch.randn(1, 3, 5),
                         torch.randn(1, 3, 5))
try:
    ops.selective_scan(torch.randn(1, 2, 5), torch.randn(1, 2, 5), -torch.ones(2, 3), torch.randn(1, 3, 5),
                       torch.randn(1, 3, 5), backend="cpu_fused")
    error = ""
except ops.BackendUnavailable as exc:
    error = str(exc)
print(json.dumps({"ok": ok, "reason": reason, "chosen": chosen, "shape": list(out.shape), "error": error}))
"""


def _run(code: str) -> dict:
    # As a user runs it: without Triton's interpreter (the test suite switches it on, and then the triton backend
    # can legitimately run, and import triton, for CPU tensors).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_numba_loads_only_with_the_first_cpu_scan_and_mamba_never() -> None:
    result = _run(CHECK)
    assert result["before"] == {"numba": False, "mamba_ssm": False, "triton": False}
    assert result["after"] == {"numba": True, "mamba_ssm": False, "triton": False}


def test_without_numba_cpu_fused_is_unavailable_and_auto_falls_back() -> None:
    result = _run(NO_NUMBA)
    assert result["ok"] is False
    assert "pip install" in result["reason"]
    assert result["chosen"] == "chunked"
    assert result["shape"] == [1, 2, 5]
    assert "cpu_fused" in result["error"] and "pip install" in result["error"]
