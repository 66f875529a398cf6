"""EViT-style baseline: after a layer, keep the tokens the CLS token attends to most.

Feed-forward (no look-ahead): the decision after layer l uses only layer l's own
attention. The kept count follows a keep-ratio schedule of the *real* length of each
sample, so a padded batch behaves like per-sample runs; tensors are compacted to a
static bound ``ceil(keep_ratio * N)`` so no count has to reach the host. Dropped tokens
are discarded (EViT's fused "inattentive" token is left out on purpose: one idea here).

Shapes: attention (B, H, K, K) over the K current slots; masks (B, K) bool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from sttabt_edge.compat import ModelParts
from sttabt_edge.method.backtrack import ratio_schedule
from sttabt_edge.method.block import BlockOutput
from sttabt_edge.method.sparse import ForwardResult, Mode, TokenState, online_forward
from sttabt_edge.method.tokens import (
    Size,
    batched_gather,
    ceil_ratio,
    compact_indices,
    rank_topk_mask,
    size_max,
    size_min,
)
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.spec import TopkSpec, as_ratio


def cls_attention(attn: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """How much the prefix token(s) attend to each slot: (B, H, K, K) -> (B, K).

    Mean over heads; with a distillation token the CLS and distillation rows are averaged,
    since the head reads both.
    """
    return attn[:, :, :num_prefix_tokens].mean(dim=(1, 2))  # (B, K)


def keep_counts(
    n_real: torch.Tensor, n_live: torch.Tensor, keep_ratio: float, num_prefix_tokens: int
) -> torch.Tensor:
    """Tokens (prefix included) to keep per sample: ceil(keep_ratio * n_real), within [P, n_live].

    n_real, n_live: (B,) long. Float64 so that e.g. 0.3 * 10 rounds like Python's ``math.ceil``.
    """
    k = torch.ceil(n_real.to(torch.float64) * keep_ratio).long()  # (B,)
    return torch.minimum(k.clamp_min(num_prefix_tokens), n_live)


def static_size(num_tokens: Size, keep_ratio: float, num_slots: Size, num_prefix_tokens: int) -> Size:
    """Compact bound from shapes only: ceil(keep_ratio * N) >= every sample's count. Size ops, so a
    traced graph derives it from its input length (text) instead of freezing the example's."""
    return size_min(num_slots, size_max(ceil_ratio(num_tokens, keep_ratio), num_prefix_tokens))


def topk_keep_mask(
    scores: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor, size: Size, num_prefix_tokens: int
) -> torch.Tensor:
    """The ``keep[b]`` best live slots of each sample, prefix forced in. (B, K) -> (B, K) bool.

    keep: (B,) long with keep <= live count and keep <= size (a static bound, no host sync).
    """
    slot = torch.arange(scores.shape[1], device=scores.device).unsqueeze(0)  # (1, K)
    forced = torch.where(slot < num_prefix_tokens, torch.inf, scores)
    forced = torch.where(valid, forced, -torch.inf)  # (B, K)
    return rank_topk_mask(forced, keep, size) & valid


def cls_attention_topk(
    attn: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor, size: Size, num_prefix_tokens: int
) -> torch.Tensor:
    """Indices (B, size) into the current slots of the kept tokens, in slot order.

    The first ``keep[b]`` entries are the prefix plus the top non-prefix tokens by CLS
    attention; the remaining entries are padding (mark them invalid with
    ``arange(size) < keep``). Slot order is preserved, so the prefix stays in front.
    """
    mask = topk_keep_mask(cls_attention(attn, num_prefix_tokens), valid, keep, size, num_prefix_tokens)
    return compact_indices(mask, size, need_valid=False)[0]  # (B, size)


class TopkReducer(Reducer):
    """Top-k by CLS attention after each layer of ``prune_layers`` (default: every layer).

    ``keep_ratio``: fraction of each sample's real tokens that enter layer l+1 when layer l
    prunes; a scalar applies to every pruning layer (so with a scalar only the first
    pruning layer drops tokens), a sequence gives one ratio per layer (length L; entries of
    layers that do not prune are ignored). Use :func:`evit_schedule` for EViT's compounding
    keep rate. ``mode="mask"`` keeps full shapes and zeroes the key weight of dropped
    tokens; it equals ``"remove"`` exactly.
    """

    name = "topk"

    def __init__(self, keep_ratio: float | Sequence[float] = 0.7, prune_layers: Sequence[int] | None = None):
        super().__init__()
        self.keep_ratio = keep_ratio
        self.prune_layers = None if prune_layers is None else tuple(int(i) for i in prune_layers)

    @classmethod
    def from_spec(cls, spec: TopkSpec, approx: torch.nn.Module | None = None) -> TopkReducer:
        return cls(spec.keep_ratio, spec.prune_layers)

    def spec(self) -> TopkSpec:
        return TopkSpec(keep_ratio=as_ratio(self.keep_ratio), prune_layers=self.prune_layers)

    def run(
        self,
        parts: ModelParts,
        inputs: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        pad_mask: torch.Tensor,
        mode: Mode = "remove",
    ) -> ForwardResult:
        if mode not in ("remove", "mask"):
            raise ValueError(f"mode must be 'remove' or 'mask', got {mode!r}")
        num_layers, n, num_prefix = len(parts.layers), x.shape[1], parts.num_prefix_tokens
        ratios = ratio_schedule(self.keep_ratio, num_layers)
        prune = set(range(num_layers)) if self.prune_layers is None else set(self.prune_layers)
        if not prune <= set(range(num_layers)):
            raise ValueError(f"prune_layers {sorted(prune)} outside 0..{num_layers - 1}")
        n_real = pad_mask.sum(dim=1)  # (B,)

        def step(layer_idx: int, state: TokenState, out: BlockOutput) -> TokenState:
            if layer_idx not in prune:
                return state
            ratio = ratios[layer_idx]
            assert out.attn is not None  # online_forward(need_attn=True)
            size = static_size(n, ratio, state.hidden.shape[1], num_prefix)
            keep = keep_counts(n_real, state.valid.sum(dim=1), ratio, num_prefix)  # (B,)
            if mode == "mask":  # full shapes: a dropped token is invalid and has key weight 0
                mask = topk_keep_mask(
                    cls_attention(out.attn, num_prefix), state.valid, keep, size, num_prefix
                )
                weight = mask.to(x.dtype) if state.weight is None else state.weight * mask
                return TokenState(state.hidden, mask, state.pos, state.size, weight)
            keep_idx = cls_attention_topk(out.attn, state.valid, keep, size, num_prefix)  # (B, size)
            slot = torch.arange(size, device=x.device)  # type: ignore[arg-type]  # a traced size is a 0-dim tensor
            valid = slot.unsqueeze(0) < keep.unsqueeze(1)  # (B, size)
            return TokenState(
                batched_gather(state.hidden, keep_idx),
                valid,
                batched_gather(state.pos, keep_idx),
                batched_gather(state.size, keep_idx),
            )

        return online_forward(parts, x, pad_mask, step, need_attn=True)


def evit_schedule(keep_rate: float, prune_layers: Sequence[int], num_layers: int) -> list[float]:
    """EViT's schedule: each pruning layer keeps ``keep_rate`` of the tokens it receives.

    Returns the per-layer fraction of original tokens entering layer l+1 (TopkReducer's
    ``keep_ratio``), e.g. rate 0.7 at layers (3, 6, 9) -> 0.7, 0.49, 0.343 after them.
    """
    ratios, current = [], 1.0
    for layer in range(num_layers):
        if layer in set(prune_layers):
            current *= keep_rate
        ratios.append(current)
    return ratios
