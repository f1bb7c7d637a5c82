"""CLIPHaze: a U-Net of Transformer-Mamba dual-path blocks fused under CLIP guidance.

Importing this package is light: no open_clip, mamba_ssm or triton until they are used.
"""

__version__ = "0.1.0"
