"""The names of a dehazer's run options (precision, compile mode): their one home.

torch-free, so the CLI can offer them as choices without importing torch; the dtype of each precision is in
:data:`cliphaze.clip.encoder.PRECISIONS`, what each compile mode does in :mod:`cliphaze.compiled`.
"""

from __future__ import annotations

# Precision name -> the torch dtype attribute it stands for (fp32 first: the default).
PRECISION_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
PRECISION_NAMES = tuple(PRECISION_DTYPE_NAMES)

OFF = "off"  # no torch.compile: the network's own forward
CUDA_GRAPHS = "reduce-overhead"  # torch.compile's mode name for CUDA graphs
COMPILE_MODES = (OFF, "default", CUDA_GRAPHS, "max-autotune")
