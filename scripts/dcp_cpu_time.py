#!/usr/bin/env python
"""CPU time per frame of ``dcp`` (``DarkChannelDehazer.restore``) at 640x360, 720p and 1080p, one thread.

    NUMBA_NUM_THREADS=1 python scripts/dcp_cpu_time.py

Process CPU time, not wall time: on a shared machine other jobs stretch wall time but hardly the CPU time a
frame needs, so two commits can be compared one after the other. Frames: scikit-image's astronaut resized to
each size, four per batch (flipped copies), the best of three runs of ten batches.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch
from skimage import data

from cliphaze.baselines.dcp import DarkChannelDehazer

SIZES = ((640, 360), (1280, 720), (1920, 1080))


def cpu_ms_per_frame(width: int, height: int, *, batches: int = 10, repeats: int = 3) -> float:
    image = cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_AREA)
    frames = torch.from_numpy(np.stack([image, image[::-1], image[:, ::-1], image]).copy())
    dehazer = DarkChannelDehazer("cpu")
    for _ in range(3):  # kernels compiled or loaded, scratch allocated
        dehazer.restore(frames, None)
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(batches):
            dehazer.restore(frames, None)
        best = min(best, (time.process_time() - started) * 1000.0 / (batches * frames.shape[0]))
    return best


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    for width, height in SIZES:
        print(f"{width}x{height}: {cpu_ms_per_frame(width, height):.2f} ms of CPU per frame (batch 4, one thread)")


if __name__ == "__main__":
    main()
