"""Static token slots for LiteRT, sized from calibration data, and the rule that fills them.

LiteRT needs a static token count per layer. The union rule's count is data-dependent, between
``max(k_l, |keep[l+1]|)`` and its static bound ``min(N, k̂_l + size_{l+1})``; slots at that bound
reach N by the middle of a 12-layer ViT at keep 0.15, so the file pays for almost every token.
A threshold (concrete) model's counts have no bound below N at all.

``slots="calibrated"`` (the TFLite default) sizes each layer's slots from the sizes the rule
(the official union, or the learned thresholds) actually produces on the calibration inputs:
a quantile over those inputs (:data:`SLOT_QUANTILE`, chosen by measurement, docs/method.md).
Inside the slots the rule runs unchanged; when its set overflows a slot, the layer keeps the
next layer's kept set (prefix tokens included) and fills the rest with the set's other tokens
by importance (the layer's back-tracked scores). Capping runs from the top down, so nesting
holds (``kept[l] ⊇ kept[l+1]``), and a set that fits is kept exactly: on an input whose sets
all fit, the file computes exactly what the ONNX file computes. ``slots="bound"``: the static
upper bound (no capping; union: ``min(N, k̂_l + size_{l+1})``, thresholds: N).

What the graph runs (:class:`SlotReducer`) and the PyTorch reference it is verified against
are the same module: the source reducer's masks, then :func:`cap_to_slots`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeAlias

import numpy as np
import torch
from torch import nn

from sttabt_edge.compat import ModelParts, model_parts
from sttabt_edge.method.backtrack import Backtrack, ratio_schedule, topk_sizes
from sttabt_edge.method.sparse import KeepPlan
from sttabt_edge.method.tokens import rank_topk_mask
from sttabt_edge.models.adapter import embed
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.sttabt import SttabtReducer

SlotSizing: TypeAlias = Literal["calibrated", "bound"]
SLOT_SIZINGS: tuple[SlotSizing, ...] = ("calibrated", "bound")
# what the sidecar records: "exact" for count nesting, whose static sizes are every sample's count
SlotRecordSizing: TypeAlias = Literal["calibrated", "bound", "exact"]
# Per-layer quantile of the calibration sizes: chosen by benchmarks/tflite_slots.py (docs/method.md)
SLOT_QUANTILE = 0.95
POS_INF = float("inf")
NEG_INF = float("-inf")


def rule_bounds(reducer: SttabtReducer, n_tokens: int, num_layers: int, num_prefix_tokens: int) -> list[int]:
    """The rule's static upper bound per layer (L+1 entries, the prefix last): top-k from
    :func:`topk_sizes` of its nesting, thresholds N (any subset of the real tokens)."""
    if reducer.thresholds is not None:
        return [n_tokens] * num_layers + [num_prefix_tokens]
    assert reducer.keep_ratio is not None
    ratios = ratio_schedule(reducer.keep_ratio, num_layers)
    sizes = topk_sizes(n_tokens, ratios, num_prefix_tokens, reducer.nesting, reducer.min_keep)
    return [int(s) for s in sizes]


@torch.no_grad()
def rule_sizes(model: nn.Module, reducer: SttabtReducer, inputs: Mapping[str, torch.Tensor]) -> np.ndarray:
    """(S, L+1) int: how many tokens the rule keeps per layer on each input (the source rule, no
    slots; eval mode, hard masks). Text at any padding: counts are of real tokens."""
    parts = model_parts(model)
    x, pad = embed(parts, inputs)
    bt = reducer.eval().backtrack(parts, inputs, x, pad)
    counts = torch.stack([(k.bool() & pad).sum(dim=1) for k in bt.keep], dim=1)  # (S, L+1)
    return counts.numpy().astype(np.int64)


def calibrated_slots(sizes: np.ndarray, quantile: float, bounds: Sequence[int]) -> list[int]:
    """Per layer: the ``quantile`` of the measured sizes (an observed size: numpy's "higher"
    method, so 1.0 is the max), at most the rule's bound, and never fewer than the layer above
    (nesting needs ``slots[l] >= slots[l+1]``)."""
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"slot quantile must be in (0, 1], got {quantile:g}")
    q = np.quantile(sizes, quantile, axis=0, method="higher")  # (L+1,)
    slots = [min(int(v), int(b)) for v, b in zip(q, bounds, strict=True)]
    slots[-1] = int(bounds[-1])  # the prefix
    for layer in reversed(range(len(slots) - 1)):
        slots[layer] = max(slots[layer], slots[layer + 1])
    return slots


def cap_to_slots(
    keep: Sequence[torch.Tensor], scores: Sequence[torch.Tensor], slots: Sequence[int], capped: Sequence[bool]
) -> list[torch.Tensor]:
    """Nested masks (L+1 entries, (B, N) bool) cut to ``slots`` from the top down.

    Layer l keeps ``kept[l+1]`` and then the other tokens of the rule's set ``keep[l]`` by
    ``scores[l]``, ``min(|keep[l]|, slots[l])`` in all; a layer not ``capped`` (its slots hold
    the rule's bound) keeps ``keep[l]`` as it is. ``kept[l+1] ⊆ keep[l+1] ⊆ keep[l]``, so
    ``kept[l] ⊇ kept[l+1]`` and ``kept[l] ⊆ keep[l]``; the slots must not grow toward the top.
    """
    out = [keep[-1].bool()]
    for layer in reversed(range(len(scores))):
        rule = keep[layer].bool()
        if not capped[layer]:  # the rule's set fits its slots: rule ⊇ keep[l+1] ⊇ kept[l+1]
            out.insert(0, rule)
            continue
        ranked = torch.where(out[0], POS_INF, torch.where(rule, scores[layer], NEG_INF))  # (B, N)
        count = rule.sum(dim=1).clamp(max=slots[layer])  # (B,)
        out.insert(0, rank_topk_mask(ranked, count, slots[layer], bounded=True))
    return out


class SlotReducer(SttabtReducer):
    """``source``'s keep masks cut to fixed per-layer ``slots`` (:func:`cap_to_slots`).

    ``static`` (the LiteRT graph): the sparse loop runs on the slots, unused ones masked;
    otherwise (the PyTorch reference, any input length) on each batch's largest set. ``source``
    is the library reducer (reference) or its LiteRT-safe twin (graph: the constant k table).
    """

    def __init__(self, source: SttabtReducer, slots: Sequence[int], capped: Sequence[bool], static: bool):
        super().__init__(
            source.approx,
            keep_ratio=source.keep_ratio,
            thresholds=source.thresholds,
            p=source.p,
            head_reduce=source.head_reduce,
            nesting=source.nesting,
            min_keep=source.min_keep,
        )
        self.source = source
        self.slots = [int(s) for s in slots]
        self.capped = [bool(c) for c in capped]
        self.static = static
        if len(self.capped) != len(self.slots) - 1 or any(
            a < b for a, b in zip(self.slots, self.slots[1:], strict=False)
        ):
            raise ValueError(f"slots must be L+1 non-increasing sizes with L capped flags, got {self.slots}")

    @property
    def sizes(self) -> list[int]:
        """The static per-layer sizes of the graph (the sidecar's ``kept_sizes``)."""
        return list(self.slots)

    def backtrack(
        self, parts: ModelParts, inputs: Mapping[str, torch.Tensor], x: torch.Tensor, pad_mask: torch.Tensor
    ) -> Backtrack:
        bt = self.source.backtrack(parts, inputs, x, pad_mask)
        n = int(x.shape[1])
        slots = [min(s, n) for s in self.slots]  # the reference runs text at its own length
        keep = cap_to_slots(bt.keep, bt.scores, slots, self.capped)
        return Backtrack(keep, list(slots) if self.static else None, bt.scores, None)

    def keep_plan(self, parts: ModelParts, bt: Backtrack, static: bool = False) -> KeepPlan:
        return KeepPlan(bt.keep, bt.sizes, bt.scores, exact=False, same=None)

    def slot_record(self) -> dict[str, Any]:
        return {"sizes": self.sizes, "capped": list(self.capped)}


def plan_slots(
    model: nn.Module,
    reducer: SttabtReducer,
    calib: Mapping[str, torch.Tensor],
    n_tokens: int,
    sizing: SlotSizing,
    quantile: float = SLOT_QUANTILE,
) -> dict[str, Any]:
    """The sidecar's ``tflite.slots``: sizes (L+1), which layers are capped, and how they were chosen.

    Count nesting has exact static sizes (every sample keeps its bound): nothing to calibrate.
    """
    parts = model_parts(model)
    num_layers, prefix = len(parts.layers), parts.num_prefix_tokens
    bounds = rule_bounds(reducer, n_tokens, num_layers, prefix)
    record: dict[str, Any] = {
        "sizing": sizing,
        "bounds": bounds,
        "quantile": None,
        "calibration_samples": None,
    }
    exact = reducer.thresholds is None and reducer.nesting == "count"
    if exact or sizing == "bound":
        slots = list(bounds)
        record["sizing"] = "exact" if exact else "bound"
    else:
        measured = rule_sizes(model, reducer, calib)
        slots = calibrated_slots(measured, quantile, bounds)
        record.update(
            quantile=quantile,
            calibration_samples=int(measured.shape[0]),
            measured={
                "median": [float(v) for v in np.median(measured, axis=0)],
                "max": [int(v) for v in measured.max(axis=0)],
            },
            overflow_fraction=[float(v) for v in (measured > np.asarray(slots)).mean(axis=0)],
        )
    record.update(sizes=slots, capped=[s < b for s, b in zip(slots[:-1], bounds[:-1], strict=True)])
    return record


def slot_reducer(reducer: SttabtReducer, record: Mapping[str, Any] | None, static: bool) -> SttabtReducer:
    """``reducer`` cut to the recorded slots, or ``reducer`` itself where no layer is capped."""
    if record is None or not any(record.get("capped") or ()):
        return reducer
    return SlotReducer(reducer, record["sizes"], record["capped"], static).eval()


def sidecar_reference(meta: Mapping[str, Any], reducer: Reducer) -> Reducer:
    """The PyTorch reference of a file from its metadata: an STTABT reducer rebuilt from the spec,
    cut to the slots the TFLite sidecar records (``tflite.slots``); anything else as it is."""
    record = (meta.get("tflite") or {}).get("slots")
    if not isinstance(reducer, SttabtReducer):
        return reducer
    return slot_reducer(reducer, record, static=False)
