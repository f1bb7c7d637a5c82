"""Selective-scan benchmark: ms per call, forward and forward+backward, per available backend.

The default problem is SS2D's at 128x128: batch 1, 4 directions x d_inner 48 (Dm = 192), d_state 16,
grouped B/C with G = 4, L = 16384, float32, delta_softplus, D and delta_bias set. On CUDA,
``CUDA_CONFIG`` is the issue's size: the 960x540 stage of SS2D (L = 129,600, 4x96 channels), bf16 inputs;
the reference is not timed there (one Python step per time step) and a backend that cannot hold the
problem (``chunked``) is reported as out of memory. ``cliphaze bench scan`` and ``scripts/bench_scan.py``
print the table of ``format_scan_report``.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from cliphaze.ops import ScanTooLarge, available_backends, cross_selective_scan, resolve_backend, selective_scan
from cliphaze.ops.scan.cpu_fused import get_kernels

logger = logging.getLogger(__name__)

# Backends with nothing to warm up (eager PyTorch); the reference is too slow to run extra calls.
NO_WARMUP = frozenset({"reference"})
# Scale of the random raw delta: softplus(N(0, 1)·0.5 + bias) stays in SS2D's usual range.
DELTA_SCALE = 0.5
# Backends with a fused four-direction call in cross_selective_scan.
FUSED_CROSS_BACKENDS = frozenset({"cpu_fused", "triton"})
# What a result says instead of times when the backend could not hold the problem.
OUT_OF_MEMORY = "out of memory"


@dataclass(frozen=True)
class ScanBenchConfig:
    """Problem size and timing settings of the scan benchmark."""

    batch: int = 1  # b
    directions: int = 4  # SS2D scan directions; also the number of B/C groups G
    d_inner: int = 48  # channels per direction; Dm = directions * d_inner
    d_state: int = 16  # N
    height: int = 128  # feature-map height; L = height * width
    width: int = 128  # feature-map width
    repeats: int = 3  # timed calls per backend and pass (the median is reported)
    device: str = "cpu"  # torch device of the tensors
    seed: int = 0  # RNG seed of the random inputs
    reference_backward: bool = False  # also time reference fwd+bwd (autograd through L steps: many minutes on a CPU)
    dtype: str = "float32"  # torch dtype name of u, delta, B, C (A, D, delta_bias stay float32, as under autocast)


# The issue's size on a GPU: SS2D's scan at the 960x540 stage (480x270 grid, L = 129,600), 4x96 channels, bf16.
CUDA_CONFIG = ScanBenchConfig(d_inner=96, height=270, width=480, device="cuda", dtype="bfloat16")


@dataclass(frozen=True)
class ScanBenchResult:
    """Timing of one backend; ``*_ratio`` is reference time / this time (higher is faster)."""

    backend: str  # backend name ("auto" results are reported under the name it resolved to, plus "auto")
    forward_ms: float | None  # median ms per forward call; None when the backend could not run (see note)
    forward_backward_ms: float | None  # median ms per forward + backward call; None when not timed
    forward_ratio: float | None  # reference forward ms / forward_ms; None without a reference timing
    forward_backward_ratio: float | None  # reference fwd+bwd ms / forward_backward_ms
    backward_over_forward: float | None  # (forward_backward_ms - forward_ms) / forward_ms
    note: str | None = None  # why there are no times (OUT_OF_MEMORY), else None


def _inputs(config: ScanBenchConfig) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(config.seed)
    dim = config.directions * config.d_inner
    length = config.height * config.width
    shape = (config.batch, dim, length)
    bc = (config.batch, config.directions, config.d_state, length)

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen)

    tensors = {
        "u": rand(*shape),
        "delta": rand(*shape) * DELTA_SCALE,
        "A": -torch.arange(1, config.d_state + 1, dtype=torch.float32).repeat(dim, 1),
        "B": rand(*bc),
        "C": rand(*bc),
        "D": torch.ones(dim),
        "delta_bias": rand(dim) * DELTA_SCALE - 2.0,
    }
    low = getattr(torch, config.dtype)
    return {
        k: v.to(config.device, low if k in ("u", "delta", "B", "C") else torch.float32).requires_grad_()
        for k, v in tensors.items()
    }


def _median_ms(fn: Callable[[], None], repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def compile_time_s() -> float:
    """Seconds the cpu_fused probe took (numba import + compile, or load from numba's on-disk cache)."""
    return get_kernels().build_s


def run_scan_benchmark(
    config: ScanBenchConfig | None = None, backends: Sequence[str] | None = None
) -> list[ScanBenchResult]:
    """Time forward and forward+backward of each backend (default: every available one, plus "auto").

    Each backend except the reference runs once untimed first (numba JIT / cache load, Triton compile,
    allocator warm-up). Off the CPU the default leaves the reference out. A backend that raises ScanTooLarge
    or runs out of device memory gets a result with ``note=OUT_OF_MEMORY`` and no times.

    Returns:
        One result per backend, in the order run; ratios are relative to "reference" when it ran.
    """
    config = config or ScanBenchConfig()
    if backends is None:
        backends = [name for name, (ok, _) in available_backends(config.device).items() if ok] + ["auto"]
        if torch.device(config.device).type != "cpu":
            backends = [name for name in backends if name != "reference"]
    tensors = _inputs(config)

    def call(name: str) -> torch.Tensor:
        return selective_scan(
            tensors["u"], tensors["delta"], tensors["A"], tensors["B"], tensors["C"], D=tensors["D"],
            delta_bias=tensors["delta_bias"], delta_softplus=True, backend=name,
        )  # fmt: skip

    timings: dict[str, tuple[float, float | None] | None] = {}  # None: out of memory
    for name in backends:
        resolve_backend(name, config.device)  # raises BackendUnavailable with the install hint

        def forward(name: str = name) -> None:
            with torch.no_grad():
                call(name)

        def forward_backward(name: str = name) -> None:
            out = call(name)
            out.backward(torch.ones_like(out))

        with_backward = name != "reference" or config.reference_backward
        try:
            if name not in NO_WARMUP:
                forward()
                forward_backward()
            timings[name] = (
                _median_ms(forward, config.repeats, config.device),
                _median_ms(forward_backward, config.repeats, config.device) if with_backward else None,
            )
        except (ScanTooLarge, torch.cuda.OutOfMemoryError) as exc:
            logger.info("scan bench %s: %s (%s)", name, OUT_OF_MEMORY, str(exc).splitlines()[0])
            timings[name] = None
            if torch.device(config.device).type == "cuda":
                torch.cuda.empty_cache()
            continue
        logger.info("scan bench %s: forward %.1f ms, forward+backward %s ms", name, *timings[name])
    ref = timings.get("reference")
    results = []
    for name, timing in timings.items():
        label = name if name != "auto" else f"auto->{resolve_backend('auto', config.device)}"
        if timing is None:
            results.append(ScanBenchResult(label, None, None, None, None, None, note=OUT_OF_MEMORY))
            continue
        fwd, fwd_bwd = timing
        results.append(
            ScanBenchResult(
                backend=label,
                forward_ms=fwd,
                forward_backward_ms=fwd_bwd,
                forward_ratio=None if ref is None else ref[0] / fwd,
                forward_backward_ratio=None if ref is None or ref[1] is None or fwd_bwd is None else ref[1] / fwd_bwd,
                backward_over_forward=None if fwd_bwd is None else (fwd_bwd - fwd) / fwd,
            )
        )
    return results


def format_scan_report(config: ScanBenchConfig, results: Sequence[ScanBenchResult]) -> str:
    """The results as a plain-text table."""
    dim = config.directions * config.d_inner
    lines = [
        f"selective scan: b={config.batch} D={dim} ({config.directions}x{config.d_inner}) N={config.d_state} "
        f"G={config.directions} L={config.height * config.width} {config.dtype} softplus+D+delta_bias, "
        f"device={config.device}, "
        f"torch threads={torch.get_num_threads()}, median of {config.repeats}",
        f"{'backend':<20}{'fwd ms':>10}{'fwd+bwd ms':>12}{'fwd x ref':>11}{'f+b x ref':>11}{'bwd/fwd':>9}",
    ]
    for r in results:
        if r.forward_ms is None:
            lines.append(f"{r.backend:<20}{r.note or '-':>22}")
            continue
        fr = "-" if r.forward_ratio is None else f"{r.forward_ratio:.1f}"
        fbr = "-" if r.forward_backward_ratio is None else f"{r.forward_backward_ratio:.1f}"
        fb = "-" if r.forward_backward_ms is None else f"{r.forward_backward_ms:.1f}"
        bf = "-" if r.backward_over_forward is None else f"{r.backward_over_forward:.2f}"
        lines.append(f"{r.backend:<20}{r.forward_ms:>10.1f}{fb:>12}{fr:>11}{fbr:>11}{bf:>9}")
    return "\n".join(lines)


@dataclass(frozen=True)
class CrossScanBenchResult:
    """SS2D's whole four-direction scan (cross-scan, scan, merge), with and without the fused call."""

    backend: str  # the backend "auto" resolved to
    unfused_ms: tuple[float, float]  # (forward, forward+backward) with explicit cross_scan / cross_merge copies
    fused_ms: tuple[float, float] | None  # the same with the fused call; None when the backend has none


def run_cross_scan_benchmark(config: ScanBenchConfig | None = None) -> CrossScanBenchResult:
    """Time :func:`cliphaze.ops.cross_selective_scan` fused and unfused on the benchmark's SS2D problem."""
    config = config or ScanBenchConfig()
    gen = torch.Generator().manual_seed(config.seed)
    k, d, n = config.directions, config.d_inner, config.d_state
    h, w = config.height, config.width
    tensors = [
        torch.randn(config.batch, d, h, w, generator=gen),
        torch.randn(config.batch, k, d, h * w, generator=gen) * DELTA_SCALE,
        -torch.arange(1, n + 1, dtype=torch.float32).repeat(k * d, 1),
        torch.randn(config.batch, k, n, h * w, generator=gen),
        torch.randn(config.batch, k, n, h * w, generator=gen),
        torch.ones(k * d),
        torch.randn(k * d, generator=gen) * DELTA_SCALE - 2.0,
    ]
    low = getattr(torch, config.dtype)
    # x, delta, B, C in the benchmark's dtype; A, D, delta_bias float32 (as SS2D passes them).
    tensors = [t.to(config.device, low if i in (0, 1, 3, 4) else torch.float32).requires_grad_()
               for i, t in enumerate(tensors)]  # fmt: skip
    backend = resolve_backend("auto", config.device)

    def timed(fuse: bool) -> tuple[float, float]:
        def forward() -> None:
            with torch.no_grad():
                cross_selective_scan(*tensors, backend=backend, fuse=fuse)

        def forward_backward() -> None:
            out = cross_selective_scan(*tensors, backend=backend, fuse=fuse)
            out.backward(torch.ones_like(out))

        forward()
        forward_backward()
        return _median_ms(forward, config.repeats, config.device), _median_ms(forward_backward, config.repeats,
                                                                             config.device)  # fmt: skip

    unfused = timed(False)
    fused = timed(True) if backend in FUSED_CROSS_BACKENDS else None
    return CrossScanBenchResult(backend=backend, unfused_ms=unfused, fused_ms=fused)


def format_cross_scan_report(result: CrossScanBenchResult) -> str:
    """One table: SS2D's scan with explicit cross-scan copies vs the fused call."""
    lines = [
        f"SS2D four-direction scan incl. cross-scan/merge (backend {result.backend}):",
        f"{'path':<20}{'fwd ms':>10}{'fwd+bwd ms':>12}",
        f"{'copies + scan':<20}{result.unfused_ms[0]:>10.1f}{result.unfused_ms[1]:>12.1f}",
    ]
    if result.fused_ms is None:
        lines.append(f"{'fused':<20}{'-':>10}{'-':>12}  (no fused call on this backend)")
    else:
        f, fb = result.fused_ms
        lines.append(f"{'fused':<20}{f:>10.1f}{fb:>12.1f}  "
                     f"({result.unfused_ms[0] / f:.2f}x fwd, {result.unfused_ms[1] / fb:.2f}x fwd+bwd)")
    return "\n".join(lines)
