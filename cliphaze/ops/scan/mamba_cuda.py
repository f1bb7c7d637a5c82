"""mamba_ssm's compiled CUDA selective scan. mamba_ssm is imported only inside this backend's probe and call."""

from __future__ import annotations

import functools
import importlib

import torch

from cliphaze.ops.scan.base import BackendUnavailable, ScanResult, check_scan_args

INSTALL_HINT = (
    "install it with: pip install 'cliphaze[cuda]' (mamba-ssm builds only against a CUDA toolkit matching "
    "torch; if it installed but the kernel is missing, reinstall with "
    "pip install --no-build-isolation --force-reinstall mamba-ssm)"
)


@functools.lru_cache(maxsize=1)
def _probe_extension() -> tuple[bool, str]:
    """Import the compiled kernel itself: importing mamba_ssm proves nothing, its Python layer imports without it."""
    try:
        importlib.import_module("selective_scan_cuda")
    except ImportError as exc:
        return False, f"mamba_ssm's compiled selective_scan_cuda extension does not import ({exc}); {INSTALL_HINT}"
    try:
        importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except ImportError as exc:
        return False, f"mamba_ssm does not import ({exc}); {INSTALL_HINT}"
    return True, "mamba_ssm selective_scan_cuda"


class MambaCudaScan:
    """``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` on CUDA tensors."""

    name = "mamba_cuda"

    def available(self, device: torch.device) -> tuple[bool, str]:
        """True only for a CUDA device when the compiled extension really imports."""
        if torch.device(device).type != "cuda":
            return False, f"mamba_cuda needs CUDA tensors, got device {device!s}; {INSTALL_HINT}"
        if not torch.cuda.is_available():
            return False, f"CUDA is not available to torch; {INSTALL_HINT}"
        return _probe_extension()

    def scan(
        self,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None = None,
        z: torch.Tensor | None = None,
        delta_bias: torch.Tensor | None = None,
        delta_softplus: bool = False,
        return_last_state: bool = False,
    ) -> ScanResult:
        """See ``cliphaze.ops.scan.base`` for shapes; the last state carries no grad (as in mamba_ssm)."""
        ok, reason = self.available(u.device)
        if not ok:
            raise BackendUnavailable(f"scan backend 'mamba_cuda' is unavailable: {reason}")
        check_scan_args(u, delta, A, B, C, D, z, delta_bias)
        interface = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
        # The kernel wants contiguous last dims and fp32 A/D/delta_bias; u/delta/B/C/z may be half or bf16.
        return interface.selective_scan_fn(
            u.contiguous(),
            delta.contiguous(),
            A.float().contiguous(),
            B.contiguous(),
            C.contiguous(),
            None if D is None else D.float().contiguous(),
            None if z is None else z.contiguous(),
            None if delta_bias is None else delta_bias.float().contiguous(),
            delta_softplus,
            return_last_state,
        )
