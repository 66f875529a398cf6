"""Layer loops: dense (with attentions), planned sparse (remove or mask) and online.

* ``plan_forward`` runs a precomputed keep plan (STTABT): layer l receives the tokens
  of ``keep[l]`` and outputs only those of ``keep[l+1]``. In ``remove`` mode the tensors
  really shrink; ``mask`` mode keeps full shapes and is differentiable in soft masks, and
  equals ``remove`` on the kept tokens when masks are hard.
* ``online_forward`` lets a reducer drop or merge tokens after each layer from what the
  layer just computed (EViT-style top-k, LTP, ToMe).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import torch

from sttabt_edge.compat import ModelParts
from sttabt_edge.method.block import BlockOutput, block_forward, key_padding_bias, padding_bias
from sttabt_edge.method.tokens import Size, batch_max_sizes, batched_gather, depth_order

# "remove": real token removal (inference); "mask": full shapes, differentiable (training)
Mode: TypeAlias = Literal["remove", "mask"]


@dataclass
class KeepPlan:
    """Which tokens each layer touches.

    keep[l] (B, N) for l < L: tokens entering layer l (its keys/values). keep[l+1] is
    also the set whose outputs layer l computes (queries), so keep[l+1] ⊆ keep[l].
    keep[L]: tokens the head reads (the prefix tokens). Bool when hard, float in [0, 1]
    when soft (mask mode only). sizes: static compact bounds (len L+1) or None.
    """

    keep: list[torch.Tensor]
    sizes: list[Size] | None = None
    scores: list[torch.Tensor] | None = None  # per-layer importance, for analysis
    # every sample keeps exactly sizes[l] tokens (ViT top-k: no padding, k = size): the compact
    # tensors have no invalid slots, so remove mode skips their padding bias (ops per layer)
    exact: bool = False
    # same[l] (len L): keep[l + 1] == keep[l] in every sample, known before any data is seen
    # (top-k plans, see backtrack.same_as_next). Remove mode then skips that layer's compaction,
    # position lookup and gathers; with one keep ratio that is every layer below the top.
    same: list[bool] | None = None


@dataclass
class ForwardResult:
    prefix_hidden: torch.Tensor  # (B, P, C) final hidden states of the prefix tokens
    n_in: torch.Tensor  # (B, L) real tokens entering each layer (keys)
    n_out: torch.Tensor  # (B, L) real query rows each layer computes
    keep: list[torch.Tensor] | None = None  # (B, N) masks over original positions, L+1 entries
    attentions: list[torch.Tensor] = field(default_factory=list)  # (B, H, N, N) each (dense only)
    hidden_states: list[torch.Tensor] = field(default_factory=list)  # L+1 entries (dense only)


def dense_forward(
    parts: ModelParts,
    x: torch.Tensor,
    pad_mask: torch.Tensor,
    need_attn: bool = False,
    need_hidden: bool = False,
    prefix_only_top: bool = False,
) -> ForwardResult:
    """The unpruned model; optionally returns every layer's attention probabilities.

    ``prefix_only_top``: the top layer computes only the prefix tokens' query rows (its map
    is then (B, H, P, N)), all the head and back-tracking read there.
    """
    bias = key_padding_bias(not parts.image, pad_mask, x.dtype)
    attns, hiddens = [], [x] if need_hidden else []
    top = len(parts.layers) - 1
    for i, layer in enumerate(parts.layers):
        q_idx = parts.num_prefix_tokens if prefix_only_top and i == top else None
        out = block_forward(
            layer,
            x,
            parts.num_heads,
            q_idx=q_idx,
            key_bias=bias,
            need_attn=need_attn,
            dropout=parts.dropout_p,
        )
        x = out.hidden
        if need_attn:
            assert out.attn is not None  # block_forward(need_attn=True) returns it
            attns.append(out.attn)
        if need_hidden:
            hiddens.append(x)
    n, n_out = dense_counts(pad_mask, len(parts.layers), parts.num_prefix_tokens, prefix_only_top)
    return ForwardResult(x[:, : parts.num_prefix_tokens], n, n_out, None, attns, hiddens)


def dense_counts(
    pad_mask: torch.Tensor, num_layers: int, num_prefix_tokens: int, prefix_only_top: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_in, n_out), each (B, L): a dense pass's real key and query counts per layer; with
    ``prefix_only_top`` the top layer computes only the prefix rows."""
    n = pad_mask.sum(dim=1, keepdim=True).expand(-1, num_layers)  # (B, L)
    if not prefix_only_top:
        return n, n
    n_out = n.clone()
    n_out[:, -1] = num_prefix_tokens
    return n, n_out


def plan_forward(
    parts: ModelParts, x: torch.Tensor, pad_mask: torch.Tensor, plan: KeepPlan, mode: Mode = "remove"
) -> ForwardResult:
    """Run the model under a keep plan. mode: "remove" (real removal) or "mask"."""
    if mode == "remove":
        return _remove_forward(parts, x, pad_mask, plan)
    if mode == "mask":
        return _mask_forward(parts, x, pad_mask, plan)
    raise ValueError(f"mode must be 'remove' or 'mask', got {mode!r}")


def _remove_forward(
    parts: ModelParts, x: torch.Tensor, pad_mask: torch.Tensor, plan: KeepPlan
) -> ForwardResult:
    """Real removal in depth order: one gather at the input, then a prefix slice per layer.

    The sets are nested (keep[l+1] ⊆ keep[l]), so ordering the kept tokens by how many layers
    they enter (deepest first, then by position) makes every layer's set, and every layer's
    output set, a prefix of that one order: layer l reads the first K_l slots and outputs the
    first K_{l+1}. Attention is permutation-equivariant (positions were added at the
    embeddings), so the result equals computing each set in position order, without a
    compaction, position lookup and gather per layer. The prefix tokens enter every layer, so
    they stay in the first slots, where the head reads them.
    """
    keep = [k.bool() & pad_mask for k in plan.keep]
    num_layers = len(parts.layers)
    depth = torch.stack(keep, dim=0).sum(dim=0)  # (B, N): t is in keep[l] iff depth[t] > l
    counts = torch.stack([k.sum(dim=1) for k in keep], dim=1)  # (B, L+1)
    # every slot holds a kept token: exact static plans, and batch-maximum sizes of a single
    # sample (batch 1: each size is that sample's count), so no layer needs a padding bias
    exact = plan.sizes is not None and plan.exact or plan.sizes is None and _batch_is_one(x)
    sizes = plan.sizes or batch_max_sizes(counts)
    order = depth_order(depth, sizes[0])  # (B, K0) original positions
    h = batched_gather(x, order)  # (B, K0, C)
    slot_depth = None if exact else torch.gather(depth, 1, order)  # (B, K0)
    same = plan.same or [False] * num_layers
    top = num_layers - 1
    for layer_idx, layer in enumerate(parts.layers):
        q_idx: Size | None = None  # same set as the input: every row
        if layer_idx == top:  # the head reads only the prefix, the first P slots
            q_idx = parts.num_prefix_tokens
        elif not same[layer_idx]:
            q_idx = sizes[layer_idx + 1]
        bias = None
        if slot_depth is not None:
            bias = padding_bias(slot_depth[:, : sizes[layer_idx]] > layer_idx, h.dtype)  # (B, 1, 1, K_l)
        h = block_forward(
            layer, h, parts.num_heads, q_idx=q_idx, key_bias=bias, dropout=parts.dropout_p
        ).hidden
    return ForwardResult(h[:, : parts.num_prefix_tokens], counts[:, :-1], counts[:, 1:], keep)


def _batch_is_one(x: torch.Tensor) -> bool:
    """Batch size 1, as a Python bool: a fixed-batch graph traced at batch 1 keeps the shortcut
    (the batch axis cannot change there); a dynamic-batch graph is traced at batch 2 and keeps
    the general path, which serves every batch size."""
    return int(x.shape[0]) == 1


def _mask_forward(
    parts: ModelParts, x: torch.Tensor, pad_mask: torch.Tensor, plan: KeepPlan
) -> ForwardResult:
    pad = pad_mask.to(x.dtype)
    keep = [k.to(x.dtype) * pad for k in plan.keep]
    bias = padding_bias(pad_mask, x.dtype)
    for layer_idx, layer in enumerate(parts.layers):
        m_in, m_out = keep[layer_idx], keep[layer_idx + 1]
        out = block_forward(
            layer,
            x,
            parts.num_heads,
            key_bias=bias,
            key_weight=m_in[:, None, None, :],
            dropout=parts.dropout_p,
        )
        x = torch.lerp(x, out.hidden, m_out.unsqueeze(-1))  # kept outputs updated, others unchanged
    counts = torch.stack([k.sum(dim=1) for k in keep], dim=1)
    return ForwardResult(x[:, : parts.num_prefix_tokens], counts[:, :-1], counts[:, 1:], keep)


@dataclass
class TokenState:
    """Tokens alive in an online loop (compacted, padded per batch)."""

    hidden: torch.Tensor  # (B, K, C)
    valid: torch.Tensor  # (B, K) bool: real (non-pad, non-dropped) tokens
    pos: torch.Tensor  # (B, K) original position of each slot (merged: its representative)
    size: torch.Tensor  # (B, K) float: how many original tokens a slot stands for (ToMe)
    weight: torch.Tensor | None = None  # (B, K) soft keep weight, mask mode only


# (layer index, state before the layer, the layer's output) -> state for the next layer
OnlineStep = Callable[[int, TokenState, BlockOutput], TokenState]


def online_forward(
    parts: ModelParts,
    x: torch.Tensor,
    pad_mask: torch.Tensor,
    step: OnlineStep,
    need_attn: bool = True,
    need_keys: bool = False,
    size_bias: bool = False,
) -> ForwardResult:
    """Each layer computes all live tokens, then ``step`` drops or merges some."""
    b, n, _ = x.shape
    pos = torch.arange(n, device=x.device).unsqueeze(0).expand(b, -1)
    state = TokenState(x, pad_mask.clone(), pos, torch.ones(b, n, dtype=x.dtype, device=x.device))
    n_in, n_out, keep = [], [], []
    for layer_idx, layer in enumerate(parts.layers):
        keep.append(_alive_mask(state, n))
        bias = padding_bias(state.valid, x.dtype)
        if size_bias:  # ToMe proportional attention: a merged token counts `size` times
            bias = bias + torch.log(state.size.clamp_min(1.0))[:, None, None, :]
        weight = None if state.weight is None else state.weight[:, None, None, :]
        out = block_forward(
            layer,
            state.hidden,
            parts.num_heads,
            key_bias=bias,
            key_weight=weight,
            need_attn=need_attn,
            need_keys=need_keys,
            dropout=parts.dropout_p,
        )
        live = state.valid.to(x.dtype) if state.weight is None else state.weight * state.valid
        n_in.append(live.sum(dim=1))
        n_out.append(live.sum(dim=1))
        state = step(layer_idx, TokenState(out.hidden, state.valid, state.pos, state.size, state.weight), out)
    keep.append(_alive_mask(state, n))
    return ForwardResult(
        state.hidden[:, : parts.num_prefix_tokens], torch.stack(n_in, 1), torch.stack(n_out, 1), keep
    )


def _alive_mask(state: TokenState, n: int) -> torch.Tensor:
    """(B, N) bool over original positions of the live slots (merged slots: representative)."""
    alive = torch.zeros(state.pos.shape[0], n, dtype=torch.long, device=state.pos.device)
    return alive.scatter_reduce(1, state.pos, state.valid.long(), reduce="amax").bool()
