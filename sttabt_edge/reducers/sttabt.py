"""STTABT: back-track an attention source (ApproxNet or the model itself) into a keep plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
from torch import nn

from sttabt_edge.compat import ModelParts
from sttabt_edge.method.backtrack import AttentionMaps, Backtrack, topk_backtrack
from sttabt_edge.method.concrete import ConcreteThresholds
from sttabt_edge.method.sparse import ForwardResult, KeepPlan, dense_forward, plan_forward
from sttabt_edge.reducers.base import Reducer


class AttentionSource(Protocol):
    """Anything that predicts the main model's attention maps: L maps (B, H, R, N), R <= N
    (a map may stop at the rows back-tracking reads, see :mod:`sttabt_edge.method.backtrack`)."""

    def attentions(self, inputs: Mapping[str, torch.Tensor]) -> AttentionMaps: ...

    def flops(self, pad_mask: torch.Tensor) -> torch.Tensor: ...


class SttabtReducer(Reducer):
    """Back-tracking with top-k ratios (``keep_ratio``) or learned thresholds (``thresholds``).

    ``approx=None`` uses the main model's own attention (an oracle for analysis: it costs a
    full dense pass, so it only shows what perfect attention prediction would give).
    """

    name = "sttabt"

    def __init__(
        self,
        approx: nn.Module | None = None,
        keep_ratio: float | Sequence[float] | None = None,
        thresholds: ConcreteThresholds | None = None,
        p: float = 0.1,
        head_reduce: str = "mean",
    ):
        super().__init__()
        if (keep_ratio is None) == (thresholds is None):
            raise ValueError("give exactly one of keep_ratio (top-k) or thresholds (concrete)")
        self.approx = approx
        self.keep_ratio = keep_ratio
        self.thresholds = thresholds
        self.p = p
        self.head_reduce = head_reduce

    def backtrack(
        self, parts: ModelParts, inputs: Mapping[str, torch.Tensor], x: torch.Tensor, pad_mask: torch.Tensor
    ) -> Backtrack:
        if self.approx is None:
            attn = dense_forward(parts, x, pad_mask, need_attn=True).attentions  # L x (B, H, N, N)
        else:
            attn = self.approx.attentions(inputs)
        if len(attn) != len(parts.layers) or attn[0].shape[-1] != x.shape[1]:
            raise ValueError(
                f"attention source gives {len(attn)} maps over {attn[0].shape[-1]} keys; the model has "
                f"{len(parts.layers)} layers and {x.shape[1]} tokens"
            )
        if self.thresholds is not None:
            return self.thresholds(attn, pad_mask, parts.num_prefix_tokens, self.p, self.head_reduce)
        return topk_backtrack(attn, pad_mask, self.keep_ratio, parts.num_prefix_tokens, self.p, self.head_reduce)

    def run(
        self, parts: ModelParts, inputs: Mapping[str, torch.Tensor], x: torch.Tensor, pad_mask: torch.Tensor,
        mode: str = "remove",
    ) -> ForwardResult:
        bt = self.backtrack(parts, inputs, x, pad_mask)
        plan = KeepPlan(bt.keep, bt.sizes or None, bt.scores, exact=self.exact_counts(parts), same=bt.same)
        return plan_forward(parts, x, pad_mask, plan, mode)

    def exact_counts(self, parts: ModelParts) -> bool:
        """Top-k on unpadded inputs (ViT) keeps exactly the static size per layer in every sample."""
        return self.thresholds is None and parts.family == "vit"

    def extra_flops(self, inputs: Mapping[str, torch.Tensor], pad_mask: torch.Tensor) -> torch.Tensor | None:
        return None if self.approx is None else self.approx.flops(pad_mask)
