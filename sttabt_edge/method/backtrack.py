"""Attention back-tracking: which tokens each layer must keep, from the top down.

Start from the tokens the head reads (CLS, and a distillation token if any). At layer
l, the tokens the layer must output (kept by layer l+1) distribute importance over
their keys through layer l's attention; the most important keys become layer l's
inputs. Sets are nested: a layer's inputs always include its own kept outputs.

Nesting (``nesting``), as in the official code (``update_input_mask_from_previous_attention``
with ``accumulate_indices``): ``"union"`` keeps ``topk(s, k_l) ∪ keep[l+1]``, so the sets grow
toward the input (the default, the paper's method). ``"count"`` (this project's earlier rule,
kept for comparison) counts ``keep[l+1]`` inside the k_l slots, so a layer keeps exactly
``max(k_l, |keep[l+1]|)`` tokens and one keep ratio gives every layer the top layer's set.

Propagation weight ``p``: each kept output row weighs its attention row by
``((1 - p) + p * importance) / |kept|`` (importance normalised to sum 1 over the kept set,
as the official ``att * impact * p + att * (1 - p)`` followed by a mean over the kept rows),
so p = 0 treats every kept token as equally needed.

Short inputs: every layer keeps at least ``min(n_real, min_keep)`` tokens (prefix included),
so a three-token text is never reduced to its CLS token (a deviation from the official code,
which computes k from the padded length at batch 1 and has no floor).

Shapes: attention maps are one (B, H, R, N) tensor per layer (a list, or a stacked
(L, B, H, N, N) tensor), padding mask (B, N) bool, True = real. A map may hold only its
first R <= N query rows: back-tracking reads the rows of the tokens a layer outputs, and
the top layer outputs only the prefix, so an ApproxNet computes just those rows there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias, cast

import torch

from sttabt_edge.method.metrics import retention  # noqa: F401 (re-export)
from sttabt_edge.method.tokens import Size, ceil_ratio, prefix_mask, rank_topk_mask, size_max, size_min

NEG_INF = float("-inf")
POS_INF = float("inf")

# L per-layer maps (B, H, R_l, N), or one stacked (L, B, H, N, N) tensor.
AttentionMaps: TypeAlias = Sequence[torch.Tensor] | torch.Tensor
Nesting: TypeAlias = Literal["union", "count"]
NESTINGS: tuple[Nesting, ...] = ("union", "count")
HeadReduce: TypeAlias = Literal["mean", "max"]
HEAD_REDUCES: tuple[HeadReduce, ...] = ("mean", "max")
DEFAULT_MIN_KEEP = 4  # tokens per layer, prefix included (see the module docstring)


@dataclass
class Backtrack:
    """Nested keep masks (L+1 entries, see KeepPlan), static sizes and scores."""

    keep: list[torch.Tensor]
    sizes: (
        list[Size] | None
    )  # static compact bounds (top-k), None when counts are data-dependent (as KeepPlan)
    scores: list[torch.Tensor]  # (B, N) importance of layer l's inputs
    same: list[bool] | None = None  # same[l]: keep[l] == keep[l+1] in every sample (see same_as_next)


def reduce_heads(attn: torch.Tensor, head_reduce: HeadReduce = "mean") -> torch.Tensor:
    """(..., H, N, N) -> (..., N, N)."""
    if head_reduce == "mean":
        return attn.mean(dim=-3)
    if head_reduce == "max":
        return attn.amax(dim=-3)
    raise ValueError(f"head_reduce must be 'mean' or 'max', got {head_reduce!r}")


def row_weights(keep_out: torch.Tensor, importance: torch.Tensor, p: float) -> torch.Tensor:
    """Weight of each kept output row when back-propagating importance: the official
    ``((1 - p) + p * imp) / |kept|``, imp normalised to sum 1 over the kept set. (B, N) -> (B, N)."""
    keep_out = keep_out.to(importance.dtype)
    count = keep_out.sum(dim=1, keepdim=True).clamp_min(1e-6)
    imp = importance * keep_out
    imp = imp / imp.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return keep_out * ((1.0 - p) + p * imp) / count


def input_importance(attn_l: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Importance of layer inputs: weighted sum of attention rows. (B, R, N), (B, R) -> (B, N)."""
    return torch.bmm(weights.unsqueeze(1), attn_l).squeeze(1)


def layer_importance(
    attn_l: torch.Tensor, weights: torch.Tensor, head_reduce: HeadReduce = "mean", rows: int | None = None
) -> torch.Tensor:
    """Importance of one layer's inputs from its per-head maps. (B, H, R, N), (B, N) -> (B, N).

    ``rows``: every row with nonzero weight lies in the first ``rows`` (the top layer, whose kept
    outputs are the prefix), so only those rows are read and the map may hold just them; None:
    the map has all N rows. A constant, so the exported graph slices with no shape arithmetic.
    For the head mean, the weighted row sum is taken per head first (mean_h(w A_h) = w mean_h(A_h)):
    a (B, H, 1, N) product instead of a reduction over the whole (B, H, R, N) map, which
    dominated the exported mask cost.
    """
    if rows is not None:
        attn_l, weights = attn_l[..., :rows, :], weights[:, :rows]
    if head_reduce == "mean":
        s = torch.matmul(weights[:, None, None, :], attn_l)  # (B, H, 1, N)
        return s.flatten(1) if attn_l.shape[1] == 1 else s.mean(dim=1).squeeze(1)  # (B, N)
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


def check_nesting(nesting: str) -> Nesting:
    if nesting not in NESTINGS:
        raise ValueError(f"nesting must be one of {NESTINGS}, got {nesting!r}")
    return cast(Nesting, nesting)


def same_as_next(ratios: Sequence[float], nesting: Nesting = "union") -> list[bool]:
    """same[l]: a top-k plan keeps exactly layer l+1's inputs at layer l, whatever the data.

    ``"count"``: layer l keeps k_l = max(min(max(ceil(r_l n), min(n, m)), n), |keep[l+1]|)
    tokens, keep[l+1] first. Below the top, |keep[l+1]| >= that same bound at r_{l+1} >= the
    bound at r_l when r_l <= r_{l+1}, so k_l = |keep[l+1]| and the sets are equal for every
    length n. ``"union"``: keep[l] = topk ∪ keep[l+1] equals keep[l+1] for all data only when
    keep[l+1] already holds every real token (r_{l+1} >= 1). The top layer outputs only the
    prefix and is never "same".
    """
    nesting = check_nesting(nesting)
    if nesting == "union":
        return [i + 1 < len(ratios) and ratios[i + 1] >= 1.0 for i in range(len(ratios))]
    return [i + 1 < len(ratios) and ratios[i] <= ratios[i + 1] for i in range(len(ratios))]


def topk_backtrack(
    attn: AttentionMaps,
    pad_mask: torch.Tensor,
    keep_ratio: float | Sequence[float],
    num_prefix_tokens: int = 1,
    p: float = 0.1,
    head_reduce: HeadReduce = "mean",
    k_table: torch.Tensor | None = None,
    nesting: Nesting = "union",
    min_keep: int = DEFAULT_MIN_KEEP,
) -> Backtrack:
    """Top-k back-tracking; k_l = max(ceil(r_l * n_real), min(n_real, min_keep)) per sample.

    ``nesting="union"`` (official): layer l keeps ``topk(s_l, k_l) ∪ keep[l+1]``, between
    max(k_l, |keep[l+1]|) and k_l + |keep[l+1]| tokens. ``"count"``: keep[l+1] is forced into the
    k_l slots, max(k_l, |keep[l+1]|) tokens. Counts are data-dependent inside the static
    bounds ``Backtrack.sizes`` (see :func:`topk_sizes`).

    ``k_table`` (L, N+1) long, optional: k read as ``k_table[l, n_real]`` instead of a float64
    ceil in the graph (LiteRT has no float64 CEIL); see :func:`keep_table`.
    """
    num_layers, n = check_maps(attn)
    nesting = check_nesting(nesting)
    ratios, sizes, same = topk_plan(keep_ratio, num_layers, n, num_prefix_tokens, nesting, min_keep)
    n_real = pad_mask.sum(dim=1)  # (B,)
    floor = n_real.clamp(max=min_keep)  # (B,)
    keep_out = prefix_mask(pad_mask, num_prefix_tokens) & pad_mask
    importance = keep_out.to(attn[0].dtype)
    keep, scores = [keep_out], []  # type: tuple[list[torch.Tensor], list[torch.Tensor]]
    k_of: dict[
        float, torch.Tensor
    ] = {}  # per ratio: one keep ratio needs one k, not one per layer (graph ops)
    for layer in reversed(range(num_layers)):
        rows = num_prefix_tokens if layer == num_layers - 1 else None  # the top reads the prefix rows
        s = layer_importance(attn[layer], row_weights(keep_out, importance, p), head_reduce, rows)  # (B, N)
        if same[layer]:  # the top-k would pick exactly keep_out
            keep_in = keep_out
        else:
            if ratios[layer] not in k_of:
                if k_table is None:
                    k = torch.ceil(n_real.to(torch.float64) * ratios[layer]).long()
                else:
                    k = k_table[layer][n_real]  # (B,); equal ratios have equal rows
                k_of[ratios[layer]] = torch.minimum(torch.maximum(k, floor), n_real)  # (B,)
            k = k_of[ratios[layer]]
            real = torch.where(pad_mask, s, NEG_INF)
            if nesting == "union":
                bound = topk_bound(n, ratios[layer], min_keep)
                keep_in = rank_topk_mask(real, k, bound, bounded=True) | keep_out  # bound <= N
            else:
                forced = torch.where(keep_out, POS_INF, real)
                k = torch.maximum(k, keep_out.sum(dim=1))
                keep_in = rank_topk_mask(forced, k, sizes[layer]) | keep_out
        keep.insert(0, keep_in)
        scores.insert(0, s)
        keep_out, importance = keep_in, s
    return Backtrack(keep, sizes, scores, same)


def keep_table(ratios: Sequence[float], n: int) -> torch.Tensor:
    """(L, N+1) long: table[l, m] = ceil(ratios[l] * m), exactly as the float64 graph op rounds."""
    return torch.tensor([[math.ceil(m * r) for m in range(n + 1)] for r in ratios], dtype=torch.long)


def topk_plan(
    keep_ratio: float | Sequence[float],
    num_layers: int,
    n: Size,
    num_prefix_tokens: int,
    nesting: Nesting = "union",
    min_keep: int = DEFAULT_MIN_KEEP,
) -> tuple[list[float], list[Size], list[bool]]:
    """(ratios, sizes, same) of a top-k plan on N tokens, from the shape only: what
    :func:`topk_backtrack` builds, and what a sparse graph fed its masks rebuilds."""
    ratios = ratio_schedule(keep_ratio, num_layers)
    if min_keep < 1:
        raise ValueError(f"min_keep must be >= 1, got {min_keep}")
    sizes = topk_sizes(n, ratios, num_prefix_tokens, nesting, min_keep)
    return ratios, sizes, same_as_next(ratios, nesting)


def topk_bound(n: Size, ratio: float, min_keep: int = DEFAULT_MIN_KEEP) -> Size:
    """Static bound on one layer's top-k count on N tokens: min(N, max(ceil(r N), min_keep))."""
    return size_min(n, size_max(ceil_ratio(n, ratio), min_keep))


def topk_sizes(
    n: Size,
    ratios: Sequence[float],
    num_prefix_tokens: int,
    nesting: Nesting = "union",
    min_keep: int = DEFAULT_MIN_KEEP,
) -> list[Size]:
    """Static compact bounds (L+1 entries) of a top-k plan on N tokens, from the shape only.

    sizes[L] = the prefix. ``"union"``: sizes[l] = min(N, k̂_l + sizes[l+1]); ``"count"``:
    min(N, max(k̂_l, sizes[l+1])), with k̂_l = :func:`topk_bound`. Every sample's count is at
    most its bound. A separate function so an exported sparse model can rebuild the bounds
    from its own input shape.
    """
    nesting = check_nesting(nesting)
    sizes: list[Size] = [num_prefix_tokens]
    for ratio in reversed(ratios):
        k = topk_bound(n, ratio, min_keep)
        grown = k + sizes[0] if nesting == "union" else size_max(k, sizes[0])
        sizes.insert(0, size_min(n, grown))
    return sizes
