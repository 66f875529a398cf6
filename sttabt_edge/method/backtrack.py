"""Attention back-tracking: which tokens each layer must keep, from the top down.

Start from the tokens the head reads (CLS, and a distillation token if any). At layer
l, the tokens the layer must output (kept by layer l+1) distribute importance over
their keys through layer l's attention; the most important keys become layer l's
inputs. Sets are nested: a layer's inputs always include its own kept outputs.

Propagation weight ``p``: each kept output row weighs its attention row by
``(1 - p) / |kept| + p * importance`` (importance normalised to sum 1), so p = 0
treats every kept token as equally needed and p = 1 is a pure attention rollout.

Shapes: attention maps are one (B, H, R, N) tensor per layer (a list, or a stacked
(L, B, H, N, N) tensor), padding mask (B, N) bool, True = real. A map may hold only its
first R <= N query rows: back-tracking reads the rows of the tokens a layer outputs, and
the top layer outputs only the prefix, so an ApproxNet computes just those rows there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import torch

from sttabt_edge.method.tokens import Size, ceil_ratio, prefix_mask, rank_topk_mask, size_max, size_min

NEG_INF = float("-inf")
POS_INF = float("inf")

# L per-layer maps (B, H, R_l, N), or one stacked (L, B, H, N, N) tensor.
AttentionMaps: TypeAlias = Sequence[torch.Tensor] | torch.Tensor


@dataclass
class Backtrack:
    """Nested keep masks (L+1 entries, see KeepPlan), static sizes and scores."""

    keep: list[torch.Tensor]
    sizes: list[Size]
    scores: list[torch.Tensor]  # (B, N) importance of layer l's inputs
    same: list[bool] | None = None  # same[l]: keep[l] == keep[l+1] in every sample (see same_as_next)


def reduce_heads(attn: torch.Tensor, head_reduce: str = "mean") -> torch.Tensor:
    """(..., H, N, N) -> (..., N, N)."""
    if head_reduce == "mean":
        return attn.mean(dim=-3)
    if head_reduce == "max":
        return attn.amax(dim=-3)
    raise ValueError(f"head_reduce must be 'mean' or 'max', got {head_reduce!r}")


def row_weights(keep_out: torch.Tensor, importance: torch.Tensor, p: float) -> torch.Tensor:
    """Weight of each kept output row when back-propagating importance. (B, N) -> (B, N)."""
    keep_out = keep_out.to(importance.dtype)
    count = keep_out.sum(dim=1, keepdim=True).clamp_min(1e-6)
    imp = importance * keep_out
    imp = imp / imp.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return keep_out * ((1.0 - p) / count + p * imp)


def input_importance(attn_l: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Importance of layer inputs: weighted sum of attention rows. (B, R, N), (B, N) -> (B, N)."""
    return torch.bmm(weights[:, : attn_l.shape[-2]].unsqueeze(1), attn_l).squeeze(1)


def layer_importance(attn_l: torch.Tensor, weights: torch.Tensor, head_reduce: str = "mean") -> torch.Tensor:
    """Importance of one layer's inputs from its per-head maps. (B, H, R, N), (B, N) -> (B, N).

    Rows beyond R must carry zero weight. For the head mean, the weighted row sum is taken
    per head first (mean_h(w A_h) = w mean_h(A_h)): a (B, H, 1, N) product instead of a
    reduction over the whole (B, H, R, N) map, which dominated the exported mask cost.
    """
    if head_reduce == "mean":
        w = weights[:, None, None, : attn_l.shape[-2]]  # (B, 1, 1, R)
        return torch.matmul(w, attn_l).mean(dim=1).squeeze(1)  # (B, H, 1, N) -> (B, N)
    return input_importance(reduce_heads(attn_l, head_reduce), weights)


def check_maps(attn: AttentionMaps, num_layers: int | None = None) -> tuple[int, int]:
    """(L, N) of a map sequence, with a clear error for shapes back-tracking cannot read."""
    if len(attn) == 0 or attn[0].dim() != 4:
        raise ValueError("attention maps must be L tensors (B, H, R, N) or one (L, B, H, N, N) tensor")
    if num_layers is not None and len(attn) != num_layers:
        raise ValueError(f"{len(attn)} attention maps for {num_layers} layers")
    return len(attn), attn[0].shape[-1]


def ratio_schedule(keep_ratio: float | Sequence[float], num_layers: int) -> list[float]:
    """One ratio per layer input; a scalar applies to every layer."""
    if isinstance(keep_ratio, (int, float)):
        ratios = [float(keep_ratio)] * num_layers
    else:
        ratios = [float(r) for r in keep_ratio]
    if len(ratios) != num_layers:
        raise ValueError(f"keep_ratio schedule has {len(ratios)} entries, model has {num_layers} layers")
    if any(not 0.0 < r <= 1.0 for r in ratios):
        raise ValueError(f"keep ratios must be in (0, 1], got {ratios}")
    return ratios


def same_as_next(ratios: Sequence[float]) -> list[bool]:
    """same[l]: a top-k plan keeps exactly layer l+1's inputs at layer l, whatever the data.

    Layer l keeps k_l = max(min(ceil(r_l n), n), |keep[l+1]|) tokens, keep[l+1] first. Below
    the top, |keep[l+1]| >= min(ceil(r_{l+1} n), n) >= min(ceil(r_l n), n) when r_l <= r_{l+1},
    so k_l = |keep[l+1]| and the nested sets are equal for every length n. The top layer
    outputs only the prefix and is never "same".
    """
    return [i + 1 < len(ratios) and ratios[i] <= ratios[i + 1] for i in range(len(ratios))]


def topk_backtrack(
    attn: AttentionMaps,
    pad_mask: torch.Tensor,
    keep_ratio: float | Sequence[float],
    num_prefix_tokens: int = 1,
    p: float = 0.1,
    head_reduce: str = "mean",
    k_table: torch.Tensor | None = None,
) -> Backtrack:
    """Top-k back-tracking; k is ceil(ratio * real length) per sample, never below the
    layer's own kept outputs (nesting) nor the prefix.

    ``k_table`` (L, N+1) long, optional: k read as ``k_table[l, n_real]`` instead of a float64
    ceil in the graph (LiteRT has no float64 CEIL); see :func:`keep_table`.
    """
    num_layers, n = check_maps(attn)
    ratios, sizes, same = topk_plan(keep_ratio, num_layers, n, num_prefix_tokens)
    n_real = pad_mask.sum(dim=1)  # (B,)
    keep_out = prefix_mask(pad_mask, num_prefix_tokens) & pad_mask
    importance = keep_out.to(attn[0].dtype)
    keep, scores = [keep_out], []
    for layer in reversed(range(num_layers)):
        s = layer_importance(attn[layer], row_weights(keep_out, importance, p), head_reduce)  # (B, N)
        if same[layer]:  # the top-k would pick exactly keep_out
            keep_in = keep_out
        else:
            forced = torch.where(keep_out, POS_INF, torch.where(pad_mask, s, NEG_INF))
            if k_table is None:
                k = torch.ceil(n_real.to(torch.float64) * ratios[layer]).long()
            else:
                k = k_table[layer][n_real]  # (B,)
            k = torch.maximum(torch.minimum(k, n_real), keep_out.sum(dim=1))
            keep_in = rank_topk_mask(forced, k, sizes[layer]) | keep_out
        keep.insert(0, keep_in)
        scores.insert(0, s)
        keep_out, importance = keep_in, s
    return Backtrack(keep, sizes, scores, same)


def keep_table(ratios: Sequence[float], n: int) -> torch.Tensor:
    """(L, N+1) long: table[l, m] = ceil(ratios[l] * m), exactly as the float64 graph op rounds."""
    return torch.tensor([[math.ceil(m * r) for m in range(n + 1)] for r in ratios], dtype=torch.long)


def topk_plan(
    keep_ratio: float | Sequence[float], num_layers: int, n: Size, num_prefix_tokens: int
) -> tuple[list[float], list[Size], list[bool]]:
    """(ratios, sizes, same) of a top-k plan on N tokens, from the shape only: what
    :func:`topk_backtrack` builds, and what a sparse graph fed its masks rebuilds."""
    ratios = ratio_schedule(keep_ratio, num_layers)
    return ratios, topk_sizes(n, ratios, num_prefix_tokens), same_as_next(ratios)


def topk_sizes(n: Size, ratios: Sequence[float], num_prefix_tokens: int) -> list[Size]:
    """Static compact bounds (L+1 entries) of a top-k plan on N tokens, from the shape only.

    sizes[l] = min(N, max(ceil(ratio_l * N), sizes[l+1])) >= every sample's count (nested
    sets); sizes[L] = the prefix. A separate function so an exported sparse model can
    rebuild the bounds from its own input shape.
    """
    sizes: list[Size] = [num_prefix_tokens]
    for ratio in reversed(ratios):
        sizes.insert(0, size_min(n, size_max(ceil_ratio(n, ratio), sizes[0])))
    return sizes


def retention(keep: Sequence[torch.Tensor], pad_mask: torch.Tensor) -> torch.Tensor:
    """Fraction of real tokens entering each layer, per sample: (B, L). Soft masks allowed."""
    pad = pad_mask.to(torch.float32)
    n_real = pad.sum(dim=1, keepdim=True)
    return torch.stack([(k.to(torch.float32) * pad).sum(dim=1) for k in keep[:-1]], dim=1) / n_real
