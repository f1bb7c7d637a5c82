#!/usr/bin/env python
"""Whole-network effect of SS2D's fused four-direction scan on the CPU (issue 7).

Times a random-weight network's forward (inference) and a training step (forward + backward + AdamW)
with SS2D's default (the fused call when gradients are recorded, the copies otherwise: see SS2D._scan)
and with the explicit cross-scan copies always, alternating the two in one process so both see the same
machine load; prints medians and ratios. To time the fused call in inference too, pass --fuse-inference.

    python scripts/bench_ss2d_fusion.py --variant cliphaze-t --size 256 --train-crop 96 --train-batch 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import cliphaze.layers.ss2d as ss2d_module
from cliphaze.factory import create_model
from cliphaze.ops import cross_selective_scan


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="cliphaze-t")
    parser.add_argument("--size", type=int, default=256, help="inference input side in px")
    parser.add_argument("--train-crop", type=int, default=96, help="training crop side in px")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per path (alternating)")
    parser.add_argument("--fuse-inference", action="store_true", help="force the fused call in inference too")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model(args.variant)
    dim = model.config.guidance.semantic_dim
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(1, 3, args.size, args.size) * 2 - 1
    xt = torch.rand(args.train_batch, 3, args.train_crop, args.train_crop) * 2 - 1
    density, tokens = torch.rand(1, 1, 7, 7), torch.randn(1, 50, dim)

    def infer() -> None:
        model.eval()
        with torch.no_grad():
            model(x, density, tokens)

    def train_step() -> None:
        model.train()
        loss = (model(xt, density.expand(args.train_batch, -1, -1, -1), tokens.expand(args.train_batch, -1, -1))
                - xt).abs().mean()  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def forced(fuse: bool):
        def scan(*args, **kwargs):
            kwargs["fuse"] = fuse  # overrides the choice SS2D passes
            return cross_selective_scan(*args, **kwargs)

        return scan

    paths = {"default": forced(True) if args.fuse_inference else cross_selective_scan, "copies": forced(False)}
    times: dict[tuple[str, str], list[float]] = {(p, w): [] for p in paths for w in ("infer", "train")}
    for repeat in range(args.repeats + 1):  # the first round warms up (numba, allocator) and is dropped
        for name, fn in paths.items():
            ss2d_module.cross_selective_scan = fn
            t_infer, t_train = _timed(infer), _timed(train_step)
            if repeat:
                times[(name, "infer")].append(t_infer)
                times[(name, "train")].append(t_train)
    ss2d_module.cross_selective_scan = cross_selective_scan
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.variant}, torch threads {torch.get_num_threads()}, median of {args.repeats} (alternating)")
    print(f"{'path':<10}{f'infer {args.size}px ms':>20}{f'train step {args.train_batch}x{args.train_crop}px ms':>26}")
    for name in paths:
        print(f"{name:<10}{med[(name, 'infer')]:>20.0f}{med[(name, 'train')]:>26.0f}")
    print(f"speed-up over copies: inference x{med[('copies', 'infer')] / med[('default', 'infer')]:.2f}, "
          f"training step x{med[('copies', 'train')] / med[('default', 'train')]:.2f}")


if __name__ == "__main__":
    main()
