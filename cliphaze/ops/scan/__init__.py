"""Selective-scan backends: the table, lookup by name and the ``"auto"`` choice.

Backends (all with mamba_ssm's ``selective_scan_fn`` arguments and shapes, see ``base``):

* ``reference``: sequential PyTorch loop, the ground truth.
* ``chunked``: vectorized PyTorch, any device; the fallback.
* ``cpu_fused``: numba kernels with their own backward; the fast CPU path.
* ``mamba_cuda``: mamba_ssm's compiled CUDA kernel.
* ``triton``: Triton kernels (CUDA; the CPU only under ``TRITON_INTERPRET=1``, for tests).

``"auto"`` picks mamba_cuda, else triton, for CUDA tensors (chunked runs there only when named: it stores
(b, D, N, L) states), and cpu_fused (else chunked) on the CPU.
"""

from __future__ import annotations

import logging

import torch

from cliphaze.ops.scan.base import BackendUnavailable, ScanBackend, ScanError, ScanShapeError, ScanTooLarge
from cliphaze.ops.scan.chunked import ChunkedScan
from cliphaze.ops.scan.cpu_fused import CpuFusedScan
from cliphaze.ops.scan.mamba_cuda import MambaCudaScan
from cliphaze.ops.scan.reference import ReferenceScan
from cliphaze.ops.scan.triton_scan import TritonScan

logger = logging.getLogger(__name__)

AUTO = "auto"
# Every backend by name; an explicit table, no discovery.
BACKENDS: dict[str, ScanBackend] = {
    backend.name: backend for backend in (ReferenceScan(), ChunkedScan(), CpuFusedScan(), MambaCudaScan(), TritonScan())
}
# Preference order of "auto" per device type.
# On CUDA, chunked (which stores (b, D, N, L) states) runs only when asked for by name.
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cuda": ("mamba_cuda", "triton"), "cpu": ("cpu_fused", "chunked")}
# Preference order for any other device type (mps, xpu, ...).
AUTO_ORDER_OTHER: tuple[str, ...] = ("chunked",)

__all__ = [
    "AUTO",
    "BACKENDS",
    "BackendUnavailable",
    "ScanBackend",
    "ScanError",
    "ScanShapeError",
    "ScanTooLarge",
    "available_backends",
    "get_scan_backend",
    "resolve_backend",
]


class _AutoChoiceLog:
    """Remembers which (device type, backend) choices of "auto" were already logged."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()

    def once(self, device_type: str, name: str) -> None:
        if (device_type, name) not in self._seen:
            self._seen.add((device_type, name))
            logger.info("selective scan backend 'auto' chose %r for %s tensors", name, device_type)


_AUTO_LOG = _AutoChoiceLog()


def available_backends(device: torch.device | str = "cpu") -> dict[str, tuple[bool, str]]:
    """Every backend's availability for tensors on ``device``.

    Returns:
        name -> (ok, reason); the reason says what is missing and how to install it.
    """
    dev = torch.device(device)
    return {name: backend.available(dev) for name, backend in BACKENDS.items()}


def get_scan_backend(name: str) -> ScanBackend:
    """The backend called ``name`` (not ``"auto"``; see ``resolve_backend``).

    Raises:
        ValueError: unknown name.
    """
    try:
        return BACKENDS[name]
    except KeyError as exc:
        raise ValueError(f"unknown scan backend {name!r}; choose one of {[AUTO, *BACKENDS]}") from exc


def resolve_backend(name: str, device: torch.device | str) -> str:
    """The concrete backend name to run for ``name`` on ``device``.

    ``"auto"`` picks the first available backend of ``AUTO_ORDER`` and logs the choice once per
    (device type, backend) at INFO. A named backend is checked and returned.

    Raises:
        ValueError: unknown name.
        BackendUnavailable: the named backend cannot run on ``device``; the message has the install hint.
    """
    dev = torch.device(device)
    if name == AUTO:
        for candidate in AUTO_ORDER.get(dev.type, AUTO_ORDER_OTHER):
            ok, reason = BACKENDS[candidate].available(dev)
            if ok:
                _AUTO_LOG.once(dev.type, candidate)
                return candidate
            logger.debug("scan backend %r unavailable on %s: %s", candidate, dev.type, reason)
        raise BackendUnavailable(
            f"no scan backend of {AUTO_ORDER.get(dev.type, AUTO_ORDER_OTHER)} can run on {dev}; "
            "install one, or name 'chunked' explicitly"
        )
    ok, reason = get_scan_backend(name).available(dev)
    if not ok:
        raise BackendUnavailable(f"scan backend {name!r} is unavailable on {dev}: {reason}")
    return name
