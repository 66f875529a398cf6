"""Per-sample token selection and gathering with padded, variable counts.

A batch keeps a different number of tokens per sample. We represent a kept set as a
boolean mask over the original positions `(B, N)` and compact it to indices `(B, K)`
where K is the batch maximum (or a static bound); extra slots are marked invalid.
"""

from __future__ import annotations

import math
from typing import Literal, overload

import torch

# A token-count bound: a Python int in eager mode (and a SymInt under torch.export); a 0-dim
# int64 tensor while torch.jit.trace runs (it turns ``x.shape[i]`` into tensors). Keeping the
# arithmetic on such bounds in torch ops lets an ONNX graph derive them from its input shape
# instead of freezing the example's length.
Size = int | torch.Tensor


def size_min(a: Size, b: Size) -> Size:
    """min() of two bounds that stays in a traced graph (eager: the plain int min)."""
    if isinstance(a, torch.Tensor):
        return torch.minimum(a, b) if isinstance(b, torch.Tensor) else a.clamp(max=b)
    if isinstance(b, torch.Tensor):
        return b.clamp(max=a)
    return torch.sym_min(a, b)


def size_max(a: Size, b: Size) -> Size:
    """max() of two bounds that stays in a traced graph (eager: the plain int max)."""
    if isinstance(a, torch.Tensor):
        return torch.maximum(a, b) if isinstance(b, torch.Tensor) else a.clamp(min=b)
    if isinstance(b, torch.Tensor):
        return b.clamp(min=a)
    return torch.sym_max(a, b)


def ceil_ratio(n: Size, ratio: float) -> Size:
    """ceil(ratio * n); float64 in the traced branch too, so it rounds exactly like math.ceil."""
    if isinstance(n, torch.Tensor):
        return torch.ceil(n.to(torch.float64) * ratio).long()
    return math.ceil(n * ratio)


def batched_gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, ...) gathered along dim 1 with idx (B, K) -> (B, K, ...).

    A static batch of 1 (a plain int 1, as a batch-1 LiteRT or fixed-batch ONNX graph sees it)
    takes whole rows (index_select: LiteRT GATHER on K row indices, not GATHER_ND on one index
    triple per element, 0.6 ms of DeiT-Tiny's 26 ms; docs/export.md); the values are the same.
    """
    if x.dim() > 2 and type(x.shape[0]) is int and x.shape[0] == 1:
        return torch.index_select(x[0], 0, idx[0]).unsqueeze(0)
    if x.dim() == 2:
        return torch.gather(x, 1, idx)
    expand = idx.reshape(*idx.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, expand)


def compact_size(keep: torch.Tensor) -> Size:
    """Largest per-sample count of a mask.

    Data-dependent shapes need the count on the host; callers use static bounds
    (top-k schedules) wherever possible and only threshold masks come here. While
    tracing for export it stays a 0-dim tensor (a data-dependent size in the graph).
    """
    count = keep.sum(dim=1).max()
    return count if torch.jit.is_tracing() else int(count)


def batch_max_sizes(counts: torch.Tensor) -> list[Size]:
    """Per-column batch maxima of (B, L) kept counts: each layer's compact size, from one
    reduction (see :func:`compact_size` for the host sync outside tracing)."""
    top = counts.amax(dim=0)  # (L,)
    if torch.jit.is_tracing():
        return list(top.unbind(0))
    return [int(v) for v in top.tolist()]


@overload
def compact_indices(
    keep: torch.Tensor, size: Size, need_valid: Literal[True] = ...
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def compact_indices(
    keep: torch.Tensor, size: Size, need_valid: bool
) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def compact_indices(
    keep: torch.Tensor, size: Size, need_valid: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ascending positions of kept tokens, padded to `size`.

    keep: (B, N) bool. Returns idx (B, size) long and valid (B, size) bool (None when
    not ``need_valid``: the caller knows every slot is kept). Invalid slots point at a
    kept-or-not position and must be ignored via `valid`.
    One set is depth 1 of :func:`depth_order`: kept first, each group in position order.
    """
    idx = depth_order(keep.long(), size)  # (B, K)
    return idx, torch.gather(keep, 1, idx) if need_valid else None


def depth_order(depth: torch.Tensor, size: Size) -> torch.Tensor:
    """Positions of the `size` deepest tokens, deepest first, ties in position order.

    depth: (B, N) long, how many nested sets hold each token (0: none, e.g. padding).
    Returns (B, size) long. A float top-k (no int64 sort), so the same code exports to
    ONNX/TFLite; a traced ``size`` is a 0-dim tensor, which torch.topk takes (its stub says int).
    """
    n = depth.shape[1]
    ramp = torch.arange(n, device=depth.device, dtype=torch.float32)  # (N,)
    key = depth.to(torch.float32) * (n + 1) - ramp  # deeper first; earlier first within a depth
    return torch.topk(key, size, dim=1, largest=True, sorted=True).indices  # type: ignore[arg-type]  # (B, K)


def rank_topk_mask(scores: torch.Tensor, k: torch.Tensor, size: Size, bounded: bool = False) -> torch.Tensor:
    """Keep the `k[b]` highest scores of each row (k may differ per sample).

    scores: (B, N) float (use +inf to force, -inf to forbid); k: (B,) long with
    k[b] <= size. `size` is a static upper bound so no host sync is needed. ``bounded``: the
    caller guarantees size <= N, so no clamp to this row's length: a traced graph then builds
    the slot mask from (k, size) alone, and calls sharing them share it.
    """
    if not bounded:
        size = size_min(size, scores.shape[1])
    top = torch.topk(scores, size, dim=1, sorted=True).indices  # type: ignore[arg-type]  # (B, K), as above
    slot = torch.arange(size, device=scores.device).unsqueeze(0)  # type: ignore[arg-type]  # (1, K)
    chosen = slot < k.unsqueeze(1)  # (B, K)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    return keep.scatter(1, top, chosen)


def prefix_mask(pad_mask: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """(B, N) bool mask of the protected prefix tokens (CLS, distillation token)."""
    keep = torch.zeros_like(pad_mask, dtype=torch.bool)
    keep[:, :num_prefix_tokens] = True
    return keep
