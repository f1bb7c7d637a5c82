"""Model size and cost: parameters and multiply-accumulates (MACs) per frame.

Convolutions, linear layers and matrix products are counted by ``torch.utils.flop_counter`` on the
meta device (no memory, no arithmetic, so 1080p takes well under a second per variant). The selective
scan is invisible to it (it is skipped on meta tensors) and is added analytically:
``SCAN_MACS_PER_STATE`` per (channel, position, state) of every SS2D layer. Norms, activations and
soft-maxes are not counted, as usual for MAC tables.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import nn

from cliphaze.config import VARIANTS, ClipHazeConfig

# Per state element of the recurrence: h = exp(dt*A) * h + (dt*u) * B and y += C * h -> dt*A, the
# h update and the C*h read-out; the per-channel dt*u and D*u are negligible.
SCAN_MACS_PER_STATE = 3
FLOPS_PER_MAC = 2  # the flop counter reports 2 flops per multiply-accumulate
GIGA = 1e9
MEGA = 1e6
TABLE_SIZES = ((256, 256), (1080, 1920))  # (H, W) columns of the model table
DENSITY_GRID = (7, 7)  # CLIP ViT-B/32 patch grid of the density map
NUM_TOKENS = 50  # DA-CLIP semantic tokens (class + 49 patches)
NUM_DIRECTIONS = 4  # SS2D scan directions


class ModelRow(NamedTuple):
    """One line of the variant table."""

    name: str  # variant name
    params: int  # trainable parameters
    gmacs_256: float  # GMACs per 256x256 frame
    gmacs_1080p: float  # GMACs per 1920x1080 frame


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _reduced_depths(config: ClipHazeConfig) -> tuple[int, ...]:
    """Blocks per stage that represent every block type: 1, or 2 when odd blocks shift their windows."""
    kinds = 2 if config.attention.shift else 1
    return tuple(min(s.depth, kinds) for s in config.stages)


def count_gmacs(config: ClipHazeConfig, height: int, width: int) -> float:
    """GMACs of one forward pass on a (1, 3, height, width) frame, guidance (7x7 density, 50 tokens) included.

    Runs on the meta device with the "math" attention path, so every matrix product is seen. To stay
    fast for deep variants it runs a copy with one block per stage (two with shifted windows), measures
    each block's cost, and adds the blocks the copy left out (blocks of a stage cost the same).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from cliphaze.layers.ss2d import SS2D
    from cliphaze.layers.tramba import TrambaDA
    from cliphaze.model import ClipHazeNet

    reduced = _reduced_depths(config)
    small = config.replace(
        attention=dataclasses.replace(config.attention, impl="math"),
        stages=tuple(dataclasses.replace(s, depth=d) for s, d in zip(config.stages, reduced)),
    )
    with torch.device("meta"):
        model = ClipHazeNet(small)
        x = torch.empty(1, config.in_chans, height, width)
        density = torch.empty(1, 1, *DENSITY_GRID)
        tokens = torch.empty(1, NUM_TOKENS, config.guidance.semantic_dim)
    counter = FlopCounterMode(display=False)
    scan_macs = 0.0
    block_macs: dict[int, float] = {}  # id(block) -> MACs of one call
    starts: dict[int, float] = {}

    def macs_so_far() -> float:
        return counter.get_total_flops() / FLOPS_PER_MAC + scan_macs

    def on_ss2d(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        nonlocal scan_macs
        b, h, w, _ = args[0].shape
        ss2d: SS2D = module  # type: ignore[assignment]
        scan_macs += b * NUM_DIRECTIONS * ss2d.d_inner * h * w * ss2d.d_state * SCAN_MACS_PER_STATE

    def block_start(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        starts[id(module)] = macs_so_far()

    def block_end(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        block_macs[id(module)] = macs_so_far() - starts[id(module)]

    hooks = []
    for m in model.modules():
        if isinstance(m, SS2D):
            hooks.append(m.register_forward_pre_hook(on_ss2d))
        elif isinstance(m, TrambaDA):
            hooks += [m.register_forward_pre_hook(block_start), m.register_forward_hook(block_end)]
    try:
        with torch.no_grad(), counter:
            model(x, density, tokens)
    finally:
        for hook in hooks:
            hook.remove()
    total = macs_so_far()
    for stage_cfg, stage, kept in zip(config.stages, model.stages, reduced):
        costs = [block_macs[id(b)] for b in stage.blocks]  # type: ignore[union-attr]
        total += sum(costs[j % kept] for j in range(kept, stage_cfg.depth))
    return total / GIGA


def model_table(names: list[str] | None = None) -> list[ModelRow]:
    """Params and GMACs at 256x256 and 1920x1080 for each variant (all by default)."""
    from cliphaze.model import ClipHazeNet

    rows = []
    for name in names or list(VARIANTS):
        config = VARIANTS[name]
        with torch.device("meta"):
            params = count_params(ClipHazeNet(config))
        (h1, w1), (h2, w2) = TABLE_SIZES
        rows.append(ModelRow(name, params, count_gmacs(config, h1, w1), count_gmacs(config, h2, w2)))
    return rows


def format_model_table(rows: list[ModelRow] | None = None) -> str:
    """The table as aligned text (what ``cliphaze models`` prints)."""
    rows = rows if rows is not None else model_table()
    lines = [f"{'model':<16}{'params (M)':>12}{'GMACs@256x256':>16}{'GMACs@1920x1080':>18}"]
    for r in rows:
        lines.append(f"{r.name:<16}{r.params / MEGA:>12.3f}{r.gmacs_256:>16.2f}{r.gmacs_1080p:>18.1f}")
    return "\n".join(lines)
