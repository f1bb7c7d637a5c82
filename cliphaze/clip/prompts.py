"""Learnable hazy/clear prompts (CoOp / CLIP-LIT style, spec 2.7 and 5.4.4) and their safetensors files.

A :class:`PromptSet` holds the learned token embeddings P (2, context_length, width) (row 0 = hazy,
row 1 = clear), the EOT position of each row, the resulting L2-normalised text features (2, D) and the
identity of the CLIP they were learned for. Text features come from the text tower run on P directly:
``x = P + pos; x = transformer(x, causal mask); x = ln_final(x); t = x[eot] @ text_projection``.
Loading prompts for another CLIP is refused (:class:`PromptMismatchError`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from cliphaze.clip.errors import PromptError, PromptMismatchError, UnsupportedTowerError
from cliphaze.clip.towers import ClipIdentity, import_open_clip

if TYPE_CHECKING:
    from torch import nn

# Row order of every prompt tensor; the density map is the probability of row 0.
PROMPT_CLASSES = ("hazy", "clear")
HAZY, CLEAR = 0, 1
# CoOp / CLIP-LIT: 16 learnable context tokens between SOT and EOT.
NUM_CONTEXT_TOKENS = 16
PLACEHOLDER_TOKEN = "X"
PROMPTS_KIND = "cliphaze-prompts"
PROMPTS_FORMAT_VERSION = "1"
TENSOR_NAMES = ("embeddings", "eot_indices", "text_features")


@dataclass(frozen=True, eq=False)
class PromptSet:
    """Learned prompt pair for one CLIP."""

    embeddings: torch.Tensor  # (2, L, W) token embeddings, row 0 hazy, row 1 clear (float32, CPU)
    eot_indices: torch.Tensor  # (2,) int64 position of the EOT token of each row
    text_features: torch.Tensor  # (2, D) L2-normalised text features of the rows (float32, CPU)
    identity: ClipIdentity  # the CLIP they were learned with
    stats: dict[str, float] = field(default_factory=dict)  # training summary (loss, accuracy, steps)

    def check_matches(self, identity: ClipIdentity) -> None:
        """Raise :class:`PromptMismatchError` unless these prompts were made for ``identity``'s CLIP."""
        if not self.identity.matches(identity):
            raise PromptMismatchError(
                f"prompts were learned for CLIP {self.identity.describe()}, not {identity.describe()}; "
                "train prompts for this CLIP (cliphaze.clip.train_prompts)"
            )

    def to_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {
            prefix + "embeddings": self.embeddings.detach().float().cpu().contiguous(),
            prefix + "eot_indices": self.eot_indices.detach().long().cpu().contiguous(),
            prefix + "text_features": self.text_features.detach().float().cpu().contiguous(),
        }

    def metadata(self) -> dict[str, str]:
        return {
            "kind": PROMPTS_KIND,
            "format_version": PROMPTS_FORMAT_VERSION,
            "classes": json.dumps(list(PROMPT_CLASSES)),
            "clip_identity": json.dumps(self.identity.to_dict()),
            "stats": json.dumps(self.stats),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str], prefix: str = "") -> PromptSet:
        try:
            data = {name: tensors[prefix + name] for name in TENSOR_NAMES}
            identity = ClipIdentity.from_dict(json.loads(metadata["clip_identity"]))
            classes = tuple(json.loads(metadata.get("classes", json.dumps(list(PROMPT_CLASSES)))))
            stats = {k: float(v) for k, v in json.loads(metadata.get("stats", "{}")).items()}
        except (KeyError, ValueError, TypeError) as err:
            raise PromptError(f"malformed prompt data: missing or invalid {err}") from err
        if classes != PROMPT_CLASSES:
            raise PromptError(f"prompt classes {classes} are not {PROMPT_CLASSES}")
        emb = data["embeddings"]
        rows = len(PROMPT_CLASSES)
        if emb.ndim != 3 or emb.shape[0] != rows or data["text_features"].shape[0] != rows:
            raise PromptError(f"prompt embeddings must be (2, L, W), got {tuple(emb.shape)}")
        return cls(
            embeddings=emb.float(),
            eot_indices=data["eot_indices"].long(),
            text_features=F.normalize(data["text_features"].float(), dim=-1),
            identity=identity,
            stats=stats,
        )


def save_prompts(path: str | os.PathLike[str], prompts: PromptSet) -> None:
    """Write prompts (tensors + CLIP identity in the metadata) to a safetensors file."""
    from safetensors.torch import save_file

    save_file(prompts.to_tensors(), str(path), metadata=prompts.metadata())


def load_prompts(path: str | os.PathLike[str], expected: ClipIdentity | None = None) -> PromptSet:
    """Read prompts from a safetensors file; with ``expected``, refuse prompts made for another CLIP."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise PromptError(f"cannot read prompts file {path}: {err}") from err
    if metadata.get("kind") != PROMPTS_KIND:
        raise PromptError(f"{path} is not a cliphaze prompts file (kind={metadata.get('kind')!r})")
    prompts = PromptSet.from_tensors(tensors, metadata)
    if expected is not None:
        prompts.check_matches(expected)
    return prompts


def _text_tower(model: nn.Module) -> nn.Module:
    """The object carrying the text transformer (CLIP: the model itself; CustomTextCLIP: ``model.text``)."""
    text = getattr(model, "text", model)
    pool_type = getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax"))
    if pool_type != "argmax" or getattr(text, "cls_emb", None) is not None:
        raise UnsupportedTowerError(f"prompt learning needs an argmax-pooled (EOT) text tower, got pool {pool_type!r}")
    return text


def init_prompt_embeddings(
    model: nn.Module, *, num_context_tokens: int = NUM_CONTEXT_TOKENS, init_texts: tuple[str, str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial prompt embeddings from the token embedding of the placeholder (or given) prompts.

    Args:
        num_context_tokens: learnable context tokens per prompt ("X X ... X").
        init_texts: (hazy, clear) texts to start from instead, e.g. ("a hazy photo.", "a clear photo.").

    Returns:
        (2, L, W) float32 embeddings and (2,) int64 EOT indices (token-id argmax).
    """
    open_clip = import_open_clip()
    text = _text_tower(model)
    context_length = text.positional_embedding.shape[0]
    if init_texts is None:
        if not 1 <= num_context_tokens <= context_length - 2:
            raise PromptError(f"num_context_tokens must be in [1, {context_length - 2}], got {num_context_tokens}")
        init_texts = (" ".join([PLACEHOLDER_TOKEN] * num_context_tokens),) * 2
    ids = open_clip.tokenize(list(init_texts), context_length=context_length).to(text.token_embedding.weight.device)
    with torch.no_grad():
        emb = text.token_embedding(ids).float().cpu()
    return emb, ids.argmax(dim=-1).cpu()


def encode_prompt_embeddings(model: nn.Module, embeddings: torch.Tensor, eot_indices: torch.Tensor) -> torch.Tensor:
    """Text features (K, D), not normalised, of prompt embeddings (K, L, W) (spec 5.4.4; keeps autograd)."""
    text = _text_tower(model)
    dtype = text.positional_embedding.dtype
    x = embeddings.to(dtype) + text.positional_embedding
    mask = text.attn_mask
    x = text.transformer(x, attn_mask=None if mask is None else mask.to(dtype))
    x = text.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot_indices.to(x.device)]
    projection = text.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def make_prompt_set(
    model: nn.Module, identity: ClipIdentity, embeddings: torch.Tensor, eot_indices: torch.Tensor,
    stats: dict[str, float] | None = None,
) -> PromptSet:
    """Freeze learned embeddings into a :class:`PromptSet` (text features computed once, float32)."""
    device = model.visual.proj.device
    with torch.no_grad():
        feats = encode_prompt_embeddings(model, embeddings.detach().to(device), eot_indices.to(device))
    return PromptSet(
        embeddings=embeddings.detach().float().cpu(),
        eot_indices=eot_indices.detach().long().cpu(),
        text_features=F.normalize(feats.float(), dim=-1).cpu(),
        identity=identity,
        stats=dict(stats or {}),
    )


def text_prompt_set(model: nn.Module, identity: ClipIdentity, texts: tuple[str, str]) -> PromptSet:
    """Zero-shot prompts from fixed (hazy, clear) texts, e.g. ("a hazy photo.", "a clear photo.")."""
    emb, eot = init_prompt_embeddings(model, init_texts=texts)
    return make_prompt_set(model, identity, emb, eot, {"steps": 0.0})


def prompt_info(prompts: PromptSet) -> dict[str, Any]:
    """JSON-able summary (for logs and CLI)."""
    return {"clip": prompts.identity.to_dict(), "context_length": int(prompts.embeddings.shape[1]), **prompts.stats}
