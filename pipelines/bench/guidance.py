"""Cost of the guidance encoders: analytic GMACs and measured wall-clock ms (random weights; timing only).

Run: ``python -m pipelines.bench.guidance [--model ViT-B-32] [--sizes 224 336 448] [--batch 1] [--repeats 5] [--threads N]``.
Prints one line per (encoder, input size): GMACs per frame, median ms per batch and per frame.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from cliphaze.clip import vit
from cliphaze.clip.daclip import DaClip
from cliphaze.clip.prompts import encode_prompt_embeddings, init_prompt_embeddings
from cliphaze.clip.towers import ClipSpec, build_clip, freeze, resolve_model_config
from cliphaze.preprocess import to_clip_input

GIGA = 1e9
WARMUP_RUNS = 1  # untimed runs before measuring (allocator, first-call dispatch)


def vit_macs(config: dict[str, Any], size_px: int, *, all_tokens: bool) -> float:
    """Multiply-accumulates of one image-tower pass (patch conv, blocks, ln_post/proj)."""
    v = config["vision_cfg"]
    width, layers, patch = v["width"], v["layers"], v["patch_size"]
    mlp = v.get("mlp_ratio", 4.0)
    grid = size_px // patch
    n = grid * grid + 1
    embed = grid * grid * width * 3 * patch * patch
    per_block = n * width * width * (4 + 2 * mlp) + 2 * n * n * width  # qkv + out + MLP, QK^T + AV
    proj = (n if all_tokens else 1) * width * config["embed_dim"]
    return float(embed + layers * per_block + proj)


def text_macs(config: dict[str, Any], prompts: int = 2) -> float:
    """Multiply-accumulates of the text tower on ``prompts`` full-length sequences."""
    t = config["text_cfg"]
    width, layers, n = t["width"], t["layers"], t["context_length"]
    mlp = t.get("mlp_ratio", 4.0)
    per_block = n * width * width * (4 + 2 * mlp) + 2 * n * n * width
    return float(prompts * (layers * per_block + width * config["embed_dim"]))


def time_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall-clock ms of ``fn`` over ``repeats`` runs (after warm-up)."""
    with torch.no_grad():
        for _ in range(WARMUP_RUNS):
            fn()
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            runs.append((time.perf_counter() - start) * 1e3)
    return statistics.median(runs)


def run(model_name: str, sizes: list[int], batch: int, repeats: int) -> list[str]:
    config = resolve_model_config(ClipSpec(model_name))
    torch.manual_seed(0)
    daclip = freeze(DaClip(build_clip(config)))
    clip = daclip.clip
    lines = [f"model {model_name}, batch {batch}, torch threads {torch.get_num_threads()}, CPU, fp32"]
    emb, eot = init_prompt_embeddings(clip)
    ms = time_ms(lambda: encode_prompt_embeddings(clip, emb, eot), repeats)
    lines.append(f"text tower (2 prompts, once per prompt set): {text_macs(config) / GIGA:.2f} GMACs, {ms:.1f} ms")
    for size in sizes:
        frames = torch.rand(batch, 3, size, size)
        x = to_clip_input(frames, size)
        gh, gw = vit.grid_size(clip.visual, size, size)
        plain_macs = vit_macs(config, size, all_tokens=True)
        plain = time_ms(lambda x=x: vit.encode_tokens(clip.visual, x), repeats)
        dac = time_ms(lambda x=x: daclip.encode_content_tokens(x), repeats)
        ctrl_macs = vit_macs(config, size, all_tokens=False) + config["vision_cfg"]["layers"] * (gh * gw + 1) * (
            config["vision_cfg"]["width"] ** 2)
        lines.append(
            f"{size}px grid {gh}x{gw}: plain CLIP (density) {plain_macs / GIGA:.2f} GMACs {plain:.1f} ms "
            f"({plain / batch:.1f} ms/frame); DA-CLIP controller+controlled (tokens) "
            f"{(ctrl_macs + plain_macs) / GIGA:.2f} GMACs {dac:.1f} ms ({dac / batch:.1f} ms/frame); "
            f"all three passes {(ctrl_macs + 2 * plain_macs) / GIGA:.2f} GMACs ~{(plain + dac) / batch:.1f} ms/frame"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name (built-in or shipped config)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 336, 448], help="CLIP input sides, px")
    parser.add_argument("--batch", type=int, default=1, help="frames per forward")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    for line in run(args.model, args.sizes, args.batch, args.repeats):
        print(line)


if __name__ == "__main__":
    main()
