"""Concrete masking: back-tracking with learned per-layer thresholds.

Each layer l has a threshold logit θ_l. A token is kept when its back-tracked
importance, normalised so that a uniform attention gives 1 (thresholds then do not
shrink like 1/N with longer inputs), exceeds exp(θ_l). In training the decision is a
concrete (relaxed Bernoulli) sample with a straight-through hard mask: the forward
pass sees 0/1 masks, gradients flow through the soft ones. At inference it is a hard
threshold, so each layer learns its own pruning rate.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from sttabt_edge.method.backtrack import (
    DEFAULT_MIN_KEEP,
    AttentionMaps,
    Backtrack,
    HeadReduce,
    check_maps,
    layer_importance,
    retention,
    row_weights,
)
from sttabt_edge.method.tokens import prefix_mask, rank_topk_mask

MIN_IMPORTANCE = 1e-4  # relative to the mean importance (1.0)


def normalized_importance(s: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
    """Scale importance so its mean over real tokens is 1. (B, N) -> (B, N)."""
    pad = pad_mask.to(s.dtype)
    total = (s * pad).sum(dim=1, keepdim=True).clamp_min(1e-12)
    return s * pad * pad.sum(dim=1, keepdim=True) / total


def concrete_backtrack(
    attn: AttentionMaps,
    pad_mask: torch.Tensor,
    threshold_logits: torch.Tensor,
    num_prefix_tokens: int = 1,
    p: float = 0.1,
    head_reduce: HeadReduce = "mean",
    temperature: float = 0.5,
    training: bool = False,
    min_keep: int = DEFAULT_MIN_KEEP,
    generator: torch.Generator | None = None,
) -> Backtrack:
    """Threshold back-tracking. Masks are float (straight-through) in training, bool at inference.

    attn: L maps (B, H, R, N) (see :mod:`.backtrack`); threshold_logits (L,). Every layer keeps at
    least min(n_real, ``min_keep``) tokens, prefix included, so no layer is ever emptied.
    """
    num_layers, _ = check_maps(attn)
    if threshold_logits.shape != (num_layers,):
        raise ValueError(
            f"threshold_logits must have shape ({num_layers},), got {tuple(threshold_logits.shape)}"
        )
    dtype = attn[0].dtype
    prefix = prefix_mask(pad_mask, num_prefix_tokens) & pad_mask
    out_hard = prefix
    out = out_hard.to(dtype)
    importance = out
    keep: list[torch.Tensor] = [out if training else out_hard]
    scores: list[torch.Tensor] = []
    for layer in reversed(range(num_layers)):
        rows = num_prefix_tokens if layer == num_layers - 1 else None  # the top reads the prefix rows
        s = layer_importance(attn[layer], row_weights(out, importance, p), head_reduce, rows)  # (B, N)
        s_norm = normalized_importance(s, pad_mask)
        # clamp, not +eps: d/ds log(s + 1e-9) ~ 1e9 on near-zero scores blew up ApproxNet gradients;
        # below 1e-4 of the mean a token is dropped by any threshold above log(1e-4) = -9.2 anyway
        logit = (torch.log(s_norm.clamp_min(MIN_IMPORTANCE)) - threshold_logits[layer]) / temperature
        if training:
            u = torch.rand(s.shape, generator=generator, dtype=dtype, device=s.device).clamp(1e-6, 1 - 1e-6)
            logit = logit + (torch.log(u) - torch.log1p(-u)) / temperature
        # top up to min_keep tokens (prefix included), counting those the layer keeps already (nesting):
        # adding min_keep more per layer would grow a floor of L - l tokens, and short inputs would
        # never reach low retention targets
        need = (min_keep - out_hard.sum(dim=1)).clamp_min(0)  # (B,)
        floor = rank_topk_mask(
            torch.where(pad_mask & ~out_hard, s, float("-inf")),
            need.minimum(pad_mask.sum(1) - out_hard.sum(1)),
            min_keep,
        )
        forced = out_hard | floor
        hard = ((logit > 0) | forced) & pad_mask
        if training:
            soft = torch.sigmoid(logit) * pad_mask.to(dtype)
            st = hard.to(dtype) + soft - soft.detach()  # forward: hard, backward: soft
            forced_f = forced.to(dtype)
            out = forced_f + (1.0 - forced_f) * st * pad_mask.to(dtype)  # nested: forced ⊇ outputs
        else:
            out = hard
        out_hard = hard
        keep.insert(0, out)
        scores.insert(0, s)
        importance = s
    return Backtrack(keep, None, scores)  # data-dependent counts: no static bounds


def retention_loss(keep: list[torch.Tensor], pad_mask: torch.Tensor, target: float) -> torch.Tensor:
    """Squared gap between the mean per-layer retention (over real tokens) and the target."""
    return (retention(keep, pad_mask).mean() - target) ** 2


class ThresholdModule(nn.Module):
    """Per-layer threshold logits θ (L,) plus a mask rule: what both concrete variants share.

    Subclasses define :meth:`masks` (the masks at given logits, used by the calibration probes);
    ``forward`` applies it at the module's own logits, soft in train mode, hard in eval mode.
    """

    kind: str = "base"

    def __init__(self, num_layers: int, init: float, temperature: float, min_keep: int):
        super().__init__()
        self.logits = nn.Parameter(torch.full((num_layers,), float(init)))
        self.temperature = temperature
        self.min_keep = min_keep

    def masks(
        self,
        attn: AttentionMaps,
        pad_mask: torch.Tensor,
        logits: torch.Tensor,
        num_prefix_tokens: int = 1,
        p: float = 0.1,
        head_reduce: HeadReduce = "mean",
        soft: bool = False,
        generator: torch.Generator | None = None,
    ) -> Backtrack:
        raise NotImplementedError

    def forward(
        self,
        attn: AttentionMaps,
        pad_mask: torch.Tensor,
        num_prefix_tokens: int = 1,
        p: float = 0.1,
        head_reduce: HeadReduce = "mean",
    ) -> Backtrack:
        return self.masks(attn, pad_mask, self.logits, num_prefix_tokens, p, head_reduce, soft=self.training)


class ConcreteThresholds(ThresholdModule):
    """Learnable per-layer threshold logits (thin wrapper over :func:`concrete_backtrack`): this
    project's straight-through variant ("ste"); the official one is
    :class:`~sttabt_edge.method.concrete_official.OfficialConcrete`."""

    kind: Literal["ste"] = "ste"

    def __init__(
        self, num_layers: int, init: float = 0.0, temperature: float = 0.5, min_keep: int = DEFAULT_MIN_KEEP
    ):
        super().__init__(num_layers, init, temperature, min_keep)

    def masks(
        self,
        attn: AttentionMaps,
        pad_mask: torch.Tensor,
        logits: torch.Tensor,
        num_prefix_tokens: int = 1,
        p: float = 0.1,
        head_reduce: HeadReduce = "mean",
        soft: bool = False,
        generator: torch.Generator | None = None,
    ) -> Backtrack:
        """Masks at given logits (calibration probes); ``soft``: the training-mode (noisy) masks."""
        return concrete_backtrack(
            attn,
            pad_mask,
            logits,
            num_prefix_tokens,
            p,
            head_reduce,
            self.temperature,
            soft,
            self.min_keep,
            generator,
        )
