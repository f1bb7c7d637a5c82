"""The cpu_fused kernels come from numba's on-disk cache in a new process, not from a new compilation.

As closures calling each other they were compiled again in every process (~40 s per CLI run and per
subprocess test); at module level a second process must only load them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
KERNELS = ("forward_kernel", "backward_kernel", "cross_forward_kernel", "cross_backward_kernel", "exp_parts",
           "decay_block", "scan_pos")  # fmt: skip
PROBE = f"""
import json
from cliphaze.ops.scan import cpu_fused, cpu_kernels
cpu_fused.get_kernels()
stats = {{n: getattr(cpu_kernels, n).stats for n in {KERNELS!r}}}
print(json.dumps({{n: [sum(s.cache_hits.values()), sum(s.cache_misses.values())] for n, s in stats.items()}}))
"""


def _probe_in_a_new_process() -> dict[str, list[int]]:
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            check=True)  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_second_process_loads_the_kernels_from_the_cache() -> None:
    _probe_in_a_new_process()  # compiles (and writes the cache) unless an earlier process already did
    second = _probe_in_a_new_process()
    for name in ("forward_kernel", "backward_kernel", "cross_forward_kernel", "cross_backward_kernel"):
        hits, misses = second[name]
        assert hits > 0 and misses == 0, (name, second)
