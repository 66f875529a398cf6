"""Token Merging (ToMe, Bolya et al. 2023), written from the paper.

After each layer, ``r`` tokens are merged away: the current slots are split alternately
into sets A (even slots) and B (odd slots); each A token finds its most similar B token
(cosine similarity of the layer's keys, averaged over heads), and the r A tokens with the
most similar matches are averaged into them, weighted by how many original tokens each
already stands for (``size``). Attention is then proportional: a merged key counts
``size`` times (``log(size)`` added to its logit, ``online_forward(size_bias=True)``).

Differences from the paper, all forced by our block interface or by padding:

* merging happens after the whole layer (attention + MLP), not between attention and MLP;
* surviving slots stay in slot order (prefix first, padding last) instead of "A then B";
* prefix tokens are never merged, in either role; padding is never merged with real tokens.
  If a sample runs out of legal pairs (very short, or only padding left), the remaining
  picks drop padding first and, only when no pair exists at all, a real token.

``r`` is static per layer (shapes derive from the input shape only, no host sync).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from sttabt_edge.compat import ModelParts
from sttabt_edge.method.backtrack import ratio_schedule
from sttabt_edge.method.block import BlockOutput
from sttabt_edge.method.sparse import ForwardResult, Mode, TokenState, online_forward
from sttabt_edge.method.tokens import batched_gather, compact_indices
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.spec import TomeSpec, as_counts, as_ratio

_PAD_RANK = -2.0  # padding A tokens: dropped after every real pair is merged
_LONE_RANK = -3.0  # real A token without any legal partner: dropped last


def max_merges(num_slots: int, num_prefix_tokens: int) -> int:
    """Non-prefix A slots, the most one matching round can merge away."""
    return math.ceil(num_slots / 2) - math.ceil(num_prefix_tokens / 2)


@dataclass(frozen=True)
class Merge:
    """One planned matching round; call it on any per-slot tensor to apply the same merge.

    src_slot, dst_slot: (B, r) slots merged away and the slots they join; src_on: (B, r)
    False where a pick is dropped rather than merged (no legal partner); keep_idx:
    (B, K - r) surviving slots in slot order.
    """

    src_slot: torch.Tensor
    dst_slot: torch.Tensor
    src_on: torch.Tensor
    keep_idx: torch.Tensor

    def __call__(self, x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        """x (B, K, C) or (B, K) -> (B, K - r, ...): sources summed (or averaged) into partners."""
        if mode == "mean":
            return self(x, "sum") / self(torch.ones_like(x), "sum")
        if mode != "sum":
            raise ValueError(f"mode must be 'sum' or 'mean', got {mode!r}")
        x3 = x.unsqueeze(-1) if x.dim() == 2 else x  # (B, K, C)
        moved = batched_gather(x3, self.src_slot) * self.src_on.unsqueeze(-1).to(x3.dtype)  # (B, r, C)
        summed = x3.scatter_add(1, self.dst_slot.unsqueeze(-1).expand(-1, -1, x3.shape[-1]), moved)
        out = batched_gather(summed, self.keep_idx)  # (B, K - r, C)
        return out.squeeze(-1) if x.dim() == 2 else out


def bipartite_soft_matching(
    metric: torch.Tensor, r: int, num_prefix_tokens: int = 1, valid: torch.Tensor | None = None
) -> Merge:
    """Plan one ToMe round on metric (B, K, C); the returned :class:`Merge` removes r slots.

    valid: (B, K) bool, True for real tokens (None = all real). Merged-away tokens are
    summed into their partner slot; use :func:`merge_wavg` for size-weighted averages.
    r is clamped to the non-prefix A slots.
    """
    b, k, _ = metric.shape
    r = max(0, min(r, max_merges(k, num_prefix_tokens)))
    if valid is None:
        valid = torch.ones(b, k, dtype=torch.bool, device=metric.device)
    slot = torch.arange(k, device=metric.device)  # (K,)
    mergeable = valid & (slot >= num_prefix_tokens).unsqueeze(0)  # (B, K)

    m = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    a, b_ = m[:, ::2], m[:, 1::2]  # (B, Na, C), (B, Nb, C)
    scores = a @ b_.transpose(-1, -2)  # (B, Na, Nb) cosine similarity
    legal = mergeable[:, ::2, None] & mergeable[:, None, 1::2]  # (B, Na, Nb)
    scores = scores.masked_fill(~legal, -torch.inf)
    node_max, node_idx = scores.max(dim=-1)  # (B, Na) best B partner of each A token

    has_pair = torch.isfinite(node_max)
    rank = torch.where(has_pair, node_max, torch.where(valid[:, ::2], _LONE_RANK, _PAD_RANK))
    rank = rank.masked_fill(slot[::2].unsqueeze(0) < num_prefix_tokens, -torch.inf)  # prefix: never
    src = rank.topk(r, dim=-1).indices  # (B, r) into A
    off = torch.zeros_like(src, dtype=torch.bool)  # a tensor: scatter(value=False) cannot be traced
    keep = torch.ones(b, k, dtype=torch.bool, device=metric.device).scatter(1, src * 2, off)
    return Merge(
        src_slot=src * 2,
        dst_slot=torch.gather(node_idx, 1, src) * 2 + 1,
        src_on=torch.gather(has_pair, 1, src),
        keep_idx=compact_indices(keep, k - r, need_valid=False)[0],
    )


def merge_wavg(merge: Merge, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average: x (B, K, C), size (B, K) -> merged x and summed sizes.

    A merged token is the mean of all original tokens it stands for, not of the two slots.
    """
    summed = merge(x * size.unsqueeze(-1), "sum")  # (B, K - r, C)
    size = merge(size, "sum")  # (B, K - r)
    return summed / size.unsqueeze(-1), size


def tome_schedule(
    num_tokens: int,
    num_layers: int,
    num_prefix_tokens: int = 1,
    r: int | Sequence[int] | None = None,
    keep_ratio: float | Sequence[float] | None = None,
) -> list[int]:
    """Per-layer r from exactly one of:

    * ``r``: a constant or one value per layer (ToMe's own parameter);
    * ``keep_ratio`` scalar: ToMe's constant r reaching that fraction of the N input tokens
      after the last layer, r = round((1 - keep_ratio) * N / L);
    * ``keep_ratio`` sequence (length L): fraction of N that enters layer l+1, like
      TopkReducer's schedule, r_l = count_l - ceil(keep_ratio[l] * N).

    Each r_l is clamped to what one matching round can merge (about half the slots), and
    count_l is the slot count the clamped merges before layer l actually left: a layer that
    cannot merge its share leaves the rest to the next layers. (Deriving count_l from the
    unclamped r made small ratios merge *less*: ratios q**(l+1) with q = 0.02 on N = 52 gave
    r = [25, 1, 0, 0, 0, 0], so retention rose again as q fell, and a bisection on q could
    not reach ToMe's lowest retention, every layer merging the most it can.)
    """
    if (r is None) == (keep_ratio is None):
        raise ValueError("give exactly one of r or keep_ratio")
    ratios: list[float] | None = None
    if r is not None:
        rs = [int(r)] * num_layers if isinstance(r, int) else [int(v) for v in r]
        if len(rs) != num_layers or min(rs) < 0:
            raise ValueError(f"r must be >= 0 with one value per layer ({num_layers}), got {r}")
    elif isinstance(keep_ratio, (int, float)):
        ratio = ratio_schedule(keep_ratio, num_layers)[0]
        rs = [round((1.0 - ratio) * num_tokens / num_layers)] * num_layers
    else:
        assert keep_ratio is not None  # exactly one of r / keep_ratio, checked above
        ratios = ratio_schedule(keep_ratio, num_layers)
    out, count = [], num_tokens
    for layer in range(num_layers):
        want = rs[layer] if ratios is None else count - math.ceil(ratios[layer] * num_tokens)
        out.append(min(max(0, want), max(0, max_merges(count, num_prefix_tokens))))
        count -= out[-1]
    return out


def tome_step(
    schedule: Sequence[int], num_prefix_tokens: int
) -> Callable[[int, TokenState, BlockOutput], TokenState]:
    """The online step: one bipartite matching round on the layer's head-mean keys."""

    def step(layer_idx: int, state: TokenState, out: BlockOutput) -> TokenState:
        r = schedule[layer_idx]
        if r == 0:
            return state
        assert out.keys is not None  # online_forward(need_keys=True)
        metric = out.keys.mean(dim=1)  # (B, H, K, D) -> (B, K, D)
        merge = bipartite_soft_matching(metric, r, num_prefix_tokens, state.valid)
        hidden, size = merge_wavg(merge, state.hidden, state.size)
        keep_idx = merge.keep_idx  # (B, K - r); a merged slot keeps its B representative's pos
        return TokenState(
            hidden, batched_gather(state.valid, keep_idx), batched_gather(state.pos, keep_idx), size
        )

    return step


class TomeReducer(Reducer):
    """ToMe with proportional attention; ``r`` / ``keep_ratio`` as in :func:`tome_schedule`."""

    name = "tome"

    def __init__(
        self, r: int | Sequence[int] | None = None, keep_ratio: float | Sequence[float] | None = None
    ):
        super().__init__()
        if (r is None) == (keep_ratio is None):
            raise ValueError("give exactly one of r or keep_ratio")
        self.r = r
        self.keep_ratio = keep_ratio

    @classmethod
    def from_spec(cls, spec: TomeSpec, approx: torch.nn.Module | None = None) -> TomeReducer:
        return cls(r=spec.r, keep_ratio=spec.keep_ratio)

    def spec(self) -> TomeSpec:
        return TomeSpec(r=as_counts(self.r), keep_ratio=as_ratio(self.keep_ratio))

    def schedule(self, num_tokens: int, num_layers: int, num_prefix_tokens: int) -> list[int]:
        return tome_schedule(num_tokens, num_layers, num_prefix_tokens, self.r, self.keep_ratio)

    def run(
        self,
        parts: ModelParts,
        inputs: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        pad_mask: torch.Tensor,
        mode: Mode = "remove",
    ) -> ForwardResult:
        if mode == "mask":
            raise NotImplementedError(
                "ToMe merges tokens, which has no full-shape mask form; use mode='remove'"
            )
        if mode != "remove":
            raise ValueError(f"mode must be 'remove' or 'mask', got {mode!r}")
        # int(): the schedule is Python ints; a trace freezes it at this N (fine for fixed-size ViT)
        schedule = self.schedule(int(x.shape[1]), len(parts.layers), parts.num_prefix_tokens)
        step = tome_step(schedule, parts.num_prefix_tokens)
        return online_forward(parts, x, pad_mask, step, need_attn=False, need_keys=True, size_bias=True)
