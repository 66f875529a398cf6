"""Threshold ties: why a learned-threshold file may keep one token more or less than PyTorch.

A threshold (concrete) rule keeps a token when its log importance exceeds the layer's learned
threshold. Another runtime computes that importance in another float32 order (LiteRT's kernels,
not PyTorch's), so a token within float noise of its threshold can land on the other side: on
the trained DeiT-Tiny of docs/deploy.md, one of 64 calibration images had a token 9e-9 from the
top layer's threshold, kept by LiteRT and not by PyTorch, and the export was refused. Top-k
rules have no such margin to test here (their ties are between tokens, not against a constant).

A sample is at a tie when the PyTorch reference itself keeps other counts once every threshold
moves by ±:data:`TIE_DELTA` (log importance). The exporter forgives a difference on such a
sample only (:func:`split_ties`), judges the others as before, and records which it forgave.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sttabt_edge.export.validate import Outputs
from sttabt_edge.method.concrete import ThresholdModule

# float32 noise in a log importance is ~1e-7 (a few ulps of values near 1); 100x that
TIE_DELTA = 1e-5
Ties = Callable[[], "np.ndarray | None"]  # the samples at a tie, computed when asked


@torch.no_grad()
def threshold_ties(
    thresholds: ThresholdModule | None, kept_counts: Callable[[], np.ndarray], delta: float = TIE_DELTA
) -> np.ndarray | None:
    """(S,) bool: the samples whose reference kept counts (``kept_counts()``, run with the
    thresholds as they are) change when every threshold logit moves by -``delta`` or +``delta``;
    None for a rule without thresholds. The thresholds are restored exactly afterwards."""
    if thresholds is None:
        return None
    saved = thresholds.logits.detach().clone()
    base = kept_counts()
    moved = np.zeros(base.shape[0], dtype=bool)
    try:
        for shift in (-delta, delta):
            thresholds.logits.copy_(saved + shift)
            moved |= (kept_counts() != base).any(axis=1)
    finally:
        thresholds.logits.copy_(saved)
    return moved


def reference_ties(reducer: Any, kept_counts: Callable[[], np.ndarray]) -> Ties:
    """:func:`threshold_ties` of ``reducer``'s thresholds (none: a top-k rule), asked only when a
    check fails; ``kept_counts`` runs the reference, which shares those thresholds."""
    return lambda: threshold_ties(getattr(reducer, "thresholds", None), kept_counts)


def split_ties(
    got: Outputs, ref: Outputs, atol: float | None, ties: Ties
) -> tuple[Outputs, Outputs, list[int]]:
    """(got, ref) without the samples forgiven as threshold ties, and their indices.

    A sample differs when its kept counts differ or (with ``atol``) its logits are off by more; the
    differing samples are forgiven only if every one of them is a tie (``ties()``, asked only then)
    and some sample is left to judge. Otherwise nothing is dropped and the caller's check decides.
    """
    (logits, kept), (r_logits, r_kept) = got, ref
    if kept is None or r_kept is None or logits.shape != r_logits.shape or kept.shape != r_kept.shape:
        return got, ref, []
    off = (kept != r_kept).any(axis=1)
    if atol is not None:
        off |= ~(np.abs(logits - r_logits) <= atol).all(axis=1)
    if not off.any() or off.all():
        return got, ref, []
    tied = ties()
    if tied is None or (off & ~tied).any():
        return got, ref, []
    keep = ~off
    return (logits[keep], kept[keep]), (r_logits[keep], r_kept[keep]), np.flatnonzero(off).tolist()
