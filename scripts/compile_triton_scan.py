#!/usr/bin/env python
"""Compile the triton scan kernels for a CUDA architecture without a GPU; print ptxas registers and spills.

The interpreter tests check the kernels' maths, not that Triton's real code generator accepts them (or how
many registers they need): this does, on any machine with the triton wheel (its bundled ptxas).

    python scripts/compile_triton_scan.py                  # sm_90 (H100/H200), bf16 inputs, default blocks
    python scripts/compile_triton_scan.py --arch 80 --dtype fp32 --block-t 128
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

# Pointer arguments that hold inputs or outputs in the tensors' own dtype; the others are float32 buffers.
OWN_DTYPE_POINTERS = frozenset({"u_ptr", "dl_ptr", "z_ptr", "b_ptr", "c_ptr", "g_ptr", "out_ptr", "du_ptr",
                                "ddl_ptr", "dz_ptr"})  # fmt: skip


def _variants(block_t: int, n_pad: int) -> dict[str, tuple[str, dict]]:
    """Kernel name and constexprs of every launch the backend makes (SS2D's and the general options)."""
    import triton.language as tl

    base = {"N_PAD": n_pad, "BLOCK_T": block_t, "HAS_Z": True, "HAS_BIAS": True, "SOFTPLUS": True, "ACC": tl.float32}
    var = {"HAS_D": True, "B_VARYING": True, "C_VARYING": True}
    cross = {**base, **var, "HAS_Z": False, "CROSS": True}
    return {
        "forward, chunk summaries": ("scan_fwd_kernel", {**base, **var, "CROSS": False, "HAS_CARRY": False,
                                                         "WRITE_OUT": False, "WRITE_LAST": False}),
        "forward, output": ("scan_fwd_kernel", {**base, **var, "CROSS": False, "HAS_CARRY": True, "WRITE_OUT": True,
                                                "WRITE_LAST": True}),
        "forward, four directions": ("scan_fwd_kernel", {**cross, "HAS_CARRY": True, "WRITE_OUT": True,
                                                         "WRITE_LAST": False}),
        "chain over chunks": ("chain_kernel", {"N_PAD": n_pad, "REVERSE": True, "ACC": tl.float32}),
        "backward, chunk summaries": ("scan_bwd_chunk_kernel", {**base, "C_VARYING": True, "CROSS": False}),
        "backward": ("scan_bwd_kernel", {**base, **var, "CROSS": False, "HAS_CARRY": True}),
        "backward, four directions": ("scan_bwd_kernel", {**cross, "HAS_CARRY": True}),
        "backward, time-invariant B/C": ("scan_bwd_kernel", {**base, **var, "B_VARYING": False, "C_VARYING": False,
                                                             "CROSS": False, "HAS_CARRY": False}),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90: Hopper)")
    parser.add_argument("--dtype", default="bf16", help="triton dtype of u, delta, B, C, z (bf16, fp16, fp32)")
    parser.add_argument("--block-t", type=int, default=None, help="time steps per block (default: the backend's)")
    parser.add_argument("--d-state", type=int, default=16, help="N")
    parser.add_argument("--num-warps", type=int, default=None, help="warps per program (default: the backend's)")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter compiles nothing")

    import triton
    from triton.backends.compiler import GPUTarget

    from cliphaze.ops.scan import triton_kernels
    from cliphaze.ops.scan.triton_scan import DEFAULT_CONFIG

    block_t = args.block_t or DEFAULT_CONFIG.block_t
    num_warps = args.num_warps or DEFAULT_CONFIG.num_warps
    n_pad = 1 << max(0, (args.d_state - 1).bit_length())
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    print(f"triton {triton.__version__}, sm_{args.arch}, {args.dtype} inputs, block_t {block_t}, N {args.d_state}, "
          f"{num_warps} warps")  # fmt: skip
    spilled = False
    for label, (kernel_name, constexprs) in _variants(block_t, n_pad).items():
        fn = getattr(triton_kernels, kernel_name)
        signature = {
            name: "constexpr" if name in constexprs
            else (f"*{args.dtype}" if name in OWN_DTYPE_POINTERS else "*fp32") if name.endswith("_ptr")
            else "i32"
            for name in fn.arg_names
        }  # fmt: skip
        source = triton.compiler.ASTSource(fn, signature, constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", args.arch, 32), options={"num_warps": num_warps})
        text = compiled.asm["ptx"]
        # The PTX names its own target (sm_90a for Hopper's wgmma-capable variant).
        gpu_name = next(line.split()[1] for line in text.splitlines() if line.startswith(".target"))
        with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
            ptx.write(text)
            ptx.flush()
            report = subprocess.run([ptxas, "-v", f"--gpu-name={gpu_name}", ptx.name, "-o", os.devnull],
                                    capture_output=True, text=True, check=True).stderr  # fmt: skip
        lines = [line.split(":", 1)[-1].strip() for line in report.splitlines()
                 if "registers" in line or "spill" in line]  # fmt: skip
        spilled |= any("spill" in line and not line.startswith("0 bytes stack frame, 0 bytes spill stores, 0 bytes")
                       for line in lines)  # fmt: skip
        print(f"{label:<30} shared {compiled.metadata.shared:>6} B | " + " | ".join(lines))
    return 1 if spilled else 0


if __name__ == "__main__":
    sys.exit(main())
