"""STTABT: back-track an attention source (ApproxNet or the model itself) into a keep plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, TypeAlias

import torch
from torch import nn

from sttabt_edge.compat import ModelParts
from sttabt_edge.method.backtrack import (
    DEFAULT_MIN_KEEP,
    AttentionMaps,
    Backtrack,
    HeadReduce,
    Nesting,
    topk_backtrack,
)
from sttabt_edge.method.concrete import ConcreteThresholds
from sttabt_edge.method.concrete_official import OfficialConcrete
from sttabt_edge.method.flops import backtrack_flops
from sttabt_edge.method.sparse import ForwardResult, KeepPlan, Mode, dense_forward, plan_forward
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.spec import SttabtSpec, as_ratio

Thresholds: TypeAlias = ConcreteThresholds | OfficialConcrete  # learned concrete threshold modules
CONCRETE: dict[str, type[Thresholds]] = {"ste": ConcreteThresholds, "official": OfficialConcrete}


class AttentionSource(Protocol):
    """Anything that predicts the main model's attention maps: L maps (B, H, R, N), R <= N
    (a map may stop at the rows back-tracking reads, see :mod:`sttabt_edge.method.backtrack`).
    In practice an ApproxNet (an ``nn.Module``, so the reducer registers it)."""

    def attentions(self, inputs: Mapping[str, torch.Tensor]) -> AttentionMaps: ...

    def flops(self, pad_mask: torch.Tensor) -> torch.Tensor: ...

    @property
    def heads(self) -> int: ...


class SttabtReducer(Reducer):
    """Back-tracking with top-k ratios (``keep_ratio``) or learned thresholds (``thresholds``).

    ``approx=None`` uses the main model's own attention (an oracle for analysis: it costs a
    full dense pass, so it only shows what perfect attention prediction would give).
    ``nesting`` ("union": the official rule; "count": the earlier rule, for comparison) and
    ``min_keep`` (the short-input floor) are those of :func:`~sttabt_edge.method.backtrack.topk_backtrack`;
    a threshold reducer takes its floor from ``thresholds.min_keep``.
    """

    name = "sttabt"
    takes_approx = True

    def __init__(
        self,
        approx: AttentionSource | nn.Module | None = None,
        keep_ratio: float | Sequence[float] | None = None,
        thresholds: Thresholds | None = None,
        p: float = 0.1,
        head_reduce: HeadReduce = "mean",
        nesting: Nesting = "union",
        min_keep: int = DEFAULT_MIN_KEEP,
    ):
        super().__init__()
        self.approx: AttentionSource | None = approx  # type: ignore[assignment]  # an ApproxNet module
        self.keep_ratio = keep_ratio
        self.thresholds: Thresholds | None = thresholds
        self.p = p
        self.head_reduce = head_reduce
        self.nesting = nesting
        # a threshold reducer's floor is its thresholds' own
        self.min_keep = thresholds.min_keep if thresholds is not None else min_keep
        self.spec()  # the spec's checks (exactly one of keep_ratio / thresholds, choices, floor): written once

    @classmethod
    def from_spec(cls, spec: SttabtSpec, approx: AttentionSource | nn.Module | None = None) -> SttabtReducer:
        """The reducer of ``spec`` (threshold logits loaded into a fresh concrete module)."""
        th = None
        if spec.thresholds is not None:
            kind = CONCRETE[spec.concrete]
            if spec.temperature is None:
                th = kind(len(spec.thresholds), 0.0, min_keep=spec.min_keep)
            else:
                th = kind(len(spec.thresholds), 0.0, temperature=spec.temperature, min_keep=spec.min_keep)
            with torch.no_grad():
                th.logits.copy_(torch.tensor(spec.thresholds, dtype=torch.float32))
        return cls(
            approx,
            keep_ratio=spec.keep_ratio,
            thresholds=th,
            p=spec.p,
            head_reduce=spec.head_reduce,
            nesting=spec.nesting,
            min_keep=spec.min_keep,
        )

    def spec(self) -> SttabtSpec:
        th = self.thresholds
        if th is None:
            return SttabtSpec(
                keep_ratio=as_ratio(self.keep_ratio),
                p=self.p,
                head_reduce=self.head_reduce,
                nesting=self.nesting,
                min_keep=self.min_keep,
            )
        return SttabtSpec(
            thresholds=tuple(float(v) for v in th.logits.detach().cpu()),
            concrete=th.kind,
            temperature=th.temperature,
            p=self.p,
            head_reduce=self.head_reduce,
            nesting=self.nesting,
            min_keep=self.min_keep,
        )

    def backtrack(
        self, parts: ModelParts, inputs: Mapping[str, torch.Tensor], x: torch.Tensor, pad_mask: torch.Tensor
    ) -> Backtrack:
        attn: AttentionMaps
        if self.approx is None:
            attn = dense_forward(parts, x, pad_mask, need_attn=True).attentions  # L x (B, H, N, N)
        else:
            attn = self.approx.attentions(inputs)
        if len(attn) != len(parts.layers) or attn[0].shape[-1] != x.shape[1]:
            raise ValueError(
                f"attention source gives {len(attn)} maps over {attn[0].shape[-1]} keys; the model has "
                f"{len(parts.layers)} layers and {x.shape[1]} tokens"
            )
        return self.backtrack_maps(attn, pad_mask, parts.num_prefix_tokens)

    def backtrack_maps(
        self, attn: AttentionMaps, pad_mask: torch.Tensor, num_prefix_tokens: int
    ) -> Backtrack:
        """Keep masks from given maps: the one dispatch (thresholds or top-k) that training,
        evaluation, export and the profiled stages all call."""
        if self.thresholds is not None:
            return self.thresholds(attn, pad_mask, num_prefix_tokens, self.p, self.head_reduce)
        assert self.keep_ratio is not None  # exactly one of keep_ratio / thresholds (__init__)
        return topk_backtrack(
            attn,
            pad_mask,
            self.keep_ratio,
            num_prefix_tokens,
            self.p,
            self.head_reduce,
            nesting=self.nesting,
            min_keep=self.min_keep,
        )

    def run(
        self,
        parts: ModelParts,
        inputs: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        pad_mask: torch.Tensor,
        mode: Mode = "remove",
    ) -> ForwardResult:
        bt = self.backtrack(parts, inputs, x, pad_mask)
        return plan_forward(parts, x, pad_mask, self.keep_plan(parts, bt), mode)

    def keep_plan(self, parts: ModelParts, bt: Backtrack, static: bool = False) -> KeepPlan:
        """The plan the sparse loop runs. Compact sizes: the static bounds where they are exact
        (count-nested top-k on ViT) or where the graph needs static shapes (``static``, LiteRT);
        otherwise each layer's batch maximum (data-dependent; a union set is often far below
        its bound)."""
        sizes = list(bt.sizes) if bt.sizes is not None and (static or self.exact_counts(parts)) else None
        return KeepPlan(bt.keep, sizes, bt.scores, exact=self.exact_counts(parts), same=bt.same)

    def exact_counts(self, parts: ModelParts) -> bool:
        """Count-nested top-k on unpadded inputs (ViT) keeps exactly the static size per layer in
        every sample; union counts depend on the data."""
        return self.thresholds is None and self.nesting == "count" and parts.image

    def extra_flops(self, inputs: Mapping[str, torch.Tensor], pad_mask: torch.Tensor) -> torch.Tensor | None:
        """The ApproxNet's FLOPs. The oracle (``approx=None``) reports none: its dense attention pass
        is an analysis device, not part of the method's cost."""
        return None if self.approx is None else self.approx.flops(pad_mask)

    def decision_flops(self, parts: ModelParts, pad_mask: torch.Tensor) -> torch.Tensor:
        """Back-tracking over the source's maps (:func:`~sttabt_edge.method.flops.backtrack_flops`)."""
        n_real = pad_mask.sum(dim=1).to(torch.float64)  # (B,)
        heads = parts.num_heads if self.approx is None else int(self.approx.heads)
        return torch.as_tensor(backtrack_flops(len(parts.layers), heads, n_real, parts.num_prefix_tokens))
