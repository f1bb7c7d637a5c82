#!/usr/bin/env python
"""Benchmark the selective-scan backends (pipelines.bench.scan); prints ms per call and ratios to reference.

    python scripts/bench_scan.py                       # every available backend + auto, SS2D at 128x128
    python scripts/bench_scan.py --backends cpu_fused chunked --repeats 5
    python scripts/bench_scan.py --cold                # numba compile time from an empty cache
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="*", default=None, help="backend names (default: all available + auto)")
    parser.add_argument("--size", type=int, default=128, help="feature map side; L = size * size")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per backend and pass")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--cold", action="store_true", help="use an empty numba cache to time a real compile")
    parser.add_argument("--reference-backward", action="store_true",
                        help="also time the reference's forward+backward (autograd through L steps: minutes)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cold:
        # Must be set before numba is imported (it is imported lazily, by the first CPU scan probe).
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="cliphaze-numba-")

    from pipelines.bench.scan import (
        ScanBenchConfig,
        compile_time_s,
        format_cross_scan_report,
        format_scan_report,
        run_cross_scan_benchmark,
        run_scan_benchmark,
    )

    started = time.perf_counter()
    if args.device == "cpu":
        print(f"cpu_fused first call (numba import + {'compile' if args.cold else 'compile or cache load'}): "
              f"{compile_time_s():.2f} s (wall {time.perf_counter() - started:.2f} s)")
    config = ScanBenchConfig(height=args.size, width=args.size, repeats=args.repeats, device=args.device,
                             reference_backward=args.reference_backward)
    print(format_scan_report(config, run_scan_benchmark(config, args.backends)))
    print(format_cross_scan_report(run_cross_scan_benchmark(config)))


if __name__ == "__main__":
    main()
