"""Calibrating STTABT thresholds to a retention target, before and during training.

Every probe here is a back-tracking pass on attention maps computed once (no model pass), so a
bisection over thresholds costs milliseconds per step. ``snap_thresholds`` shifts all layers by
one offset; ``shape_thresholds`` (the "constant" init) and ``union_thresholds`` (the "union"
init) set each layer top-down first. Calibration inputs come from ``TrainData.calib``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sttabt_edge import compat
from sttabt_edge.bisection import bisect_to
from sttabt_edge.method.backtrack import retention
from sttabt_edge.method.sparse import dense_forward
from sttabt_edge.models.adapter import embed
from sttabt_edge.reducers.sttabt import SttabtReducer, Thresholds
from sttabt_edge.train.config import SparseTrainConfig, TrainConfig
from sttabt_edge.train.data import TrainData
from sttabt_edge.train.losses import bisect_offset, calibrate_offset


def calibration_batches(
    data: TrainData, scfg: SparseTrainConfig, cfg: TrainConfig, device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """``scfg.calib_samples`` random examples of ``data.calib`` (default: training) as tensors on
    ``device`` (see TrainData). Warns when they are much shorter or longer than the held-out inputs."""
    batches = data.calibration_batches(scfg.calib_samples, cfg.optim.seed, cfg.data.max_length)
    warn_length_shift(data, batches, cfg.data.max_length)
    return [{k: torch.from_numpy(v).to(device) for k, v in b.items()} for b in batches]


LENGTH_SHIFT = 1.25  # calibration vs held-out mean text length ratio that warrants a warning


def warn_length_shift(data: TrainData, batches: Sequence[dict[str, Any]], max_length: int) -> float | None:
    """Mean length of the calibration texts over that of (up to 256) held-out texts; warns past
    :data:`LENGTH_SHIFT` either way. None for images (fixed length) or without held-out data.

    Thresholds keep a length-dependent fraction (short inputs keep more, and the forced tokens
    are a larger share of them), so a retention calibrated on SST-2's short training phrases
    (mean 13 tokens) lands far below target on its dev sentences (mean 25).
    """
    if data.modality != "text" or not data.eval or "attention_mask" not in batches[0]:
        return None
    held = data.eval_batches(64, 256, max_length)
    calib_len = float(np.mean(np.concatenate([b["attention_mask"].sum(1) for b in batches])))
    held_len = float(np.mean(np.concatenate([b[0]["attention_mask"].sum(1) for b in held])))
    ratio = calib_len / held_len
    if not 1 / LENGTH_SHIFT <= ratio <= LENGTH_SHIFT:
        warnings.warn(
            f"calibration inputs average {calib_len:.1f} tokens, held-out ones {held_len:.1f}: thresholds "
            "calibrated on them give a different retention on held-out inputs; calibrate on unlabeled inputs "
            "like the deployment ones (`train --calib-on eval`; in Python TrainData.calib)",
            stacklevel=2,
        )
    return ratio


@torch.no_grad()
def snap_thresholds(
    reducer: SttabtReducer,
    parts: compat.ModelParts,
    batches: Sequence[dict[str, torch.Tensor]],
    target: float,
    noisy: bool = False,
    span: float = 20.0,
    strict: bool = True,
) -> float:
    """Add one offset to every threshold logit so the retention on ``batches`` is ``target``.

    ``noisy=False``: the hard (inference) retention; at the start of the hard phase this removes
    the retention bias of the soft phase's noise while keeping the learned per-layer
    differences. ``noisy=True``: the training-mode retention under concrete noise (fixed
    noise, so the bisection is deterministic); the init, so the soft phase starts at the
    target it is penalised toward. The logistic noise has a std of 1.8 in log-importance
    units, so the two differ a lot. Bisection on cached attention maps: each probe is a
    back-tracking pass only, no model pass. Returns the offset.

    A target below the retention the forced tokens give on ``batches`` (prefix + ``min_keep``
    per layer: most of a short input) raises :class:`UnreachableTargetError` (``strict``) or
    warns and snaps to that floor; without the check the bisection silently ran to +``span``,
    so every such target gave the same floor-only model (see :func:`calibrate_offset`).
    """
    return _snap(
        reducer,
        _retention_probe(reducer, parts, cached_maps(reducer, parts, batches), noisy),
        target,
        span,
        strict,
    )


def _snap(
    reducer: SttabtReducer,
    per_layer: Callable[[torch.Tensor], torch.Tensor],
    target: float,
    span: float,
    strict: bool,
) -> float:
    """:func:`snap_thresholds` on a built retention probe (see :func:`_retention_probe`)."""
    th = _thresholds(reducer)
    base = th.logits.detach().clone()

    def mean_retention(offset: float) -> float:
        return float(per_layer(base + offset).mean())

    offset = calibrate_offset(mean_retention, target, -span, span, what="STTABT thresholds", strict=strict)
    offset = plateau_middle(mean_retention, offset, span)
    th.logits.copy_(base + offset)
    return offset


def _thresholds(reducer: SttabtReducer) -> Thresholds:
    """The learned thresholds calibration moves: a threshold reducer's (a top-k one has none)."""
    th = reducer.thresholds
    assert th is not None, "calibrating thresholds needs SttabtReducer(thresholds=...), not keep_ratio"
    return th


def plateau_middle(measure: Callable[[float], float], offset: float, span: float, iters: int = 20) -> float:
    """The middle of the interval of offsets around ``offset`` that give the same ``measure``.

    Retention is a step function of the offset, and a bisection ends on a step: some calibration
    token then sits exactly at its threshold, and float differences between PyTorch and an
    exported graph (or any later input that repeats it) flip it. The middle of the plateau keeps
    the most margin to every token's score without changing the retention.
    """
    level = measure(offset)

    def edge(towards: float) -> float:
        inside, outside = offset, towards
        if measure(outside) == level:
            return outside
        for _ in range(iters):
            mid = (inside + outside) / 2
            inside, outside = (mid, outside) if measure(mid) == level else (inside, mid)
        return inside

    return (edge(offset - span) + edge(offset + span)) / 2


@torch.no_grad()
def shape_thresholds(
    reducer: SttabtReducer,
    parts: compat.ModelParts,
    batches: Sequence[dict[str, torch.Tensor]],
    target: float,
    noisy: bool = False,
    span: float = 20.0,
    strict: bool = True,
) -> list[float]:
    """Set each layer's threshold, top layer first, so every layer keeps about ``target`` of the
    real tokens on ``batches``: a constant keep schedule; then snap the mean to ``target`` as
    :func:`snap_thresholds` does (same reachability check, same cached maps). Returns the
    per-layer retentions.

    Why: one shared threshold turns the importance profile into the schedule. Early layers
    spread attention evenly, so their importances all sit near the mean and a shared threshold
    keeps every token there, starving the later layers: on SST-2 at a 0.3 target the shared
    init gave [1.0, 0.18, 0.15, ...] and 76.6% after 250 steps, while one keep ratio for every
    layer scored 79.4% on the untrained model. Layer l's kept set depends only on the
    thresholds of layers >= l (nesting), so a top-down pass of 1-D bisections sets them; a
    layer whose nested set already exceeds ``target`` keeps just that.
    """
    th = _thresholds(reducer)
    logits = th.logits.detach().clone()
    per_layer = _retention_probe(reducer, parts, cached_maps(reducer, parts, batches), noisy)
    _top_down(logits, per_layer, target, span, iters=20)
    th.logits.copy_(logits)
    _snap(reducer, per_layer, target, span, strict)
    return [float(v) for v in per_layer(th.logits.detach())]


@torch.no_grad()
def union_thresholds(
    reducer: SttabtReducer,
    parts: compat.ModelParts,
    batches: Sequence[dict[str, torch.Tensor]],
    target: float,
    noisy: bool = False,
    span: float = 20.0,
    strict: bool = True,
) -> list[float]:
    """Thresholds whose *own* selection keeps the same fraction q of the real tokens at every layer
    (before the union with the layer above), q bisected so the mean retention of the nested sets is
    ``target``; then the mean is snapped as :func:`snap_thresholds` does. Returns the per-layer
    retentions.

    The threshold analogue of the official top-k with one keep ratio (``topk ∪ next``): sets grow
    toward the input. Why: the "constant" schedule asks every layer for ~target retention, and with
    nested sets a layer whose inherited set already holds that much keeps only the inherited set, so
    every layer below the top kept the top layer's set (SST-2 medium run: 0.302 in all 6 layers) and
    back-tracking below the top was never used.
    """
    th = _thresholds(reducer)
    cached = cached_maps(reducer, parts, batches)  # one maps pass serves both probes
    per_layer, own = (
        _retention_probe(reducer, parts, cached, noisy),
        _own_fraction_probe(reducer, parts, cached),
    )
    logits = th.logits.detach().clone()

    def shape(q: float) -> float:
        _top_down(logits, own, q, span, iters=16)
        return float(per_layer(logits).mean())

    shape(bisect_to(shape, target, 1e-3, 1.0, iters=12))  # retention grows with q; logits at the result
    th.logits.copy_(logits)
    _snap(reducer, per_layer, target, span, strict)
    return [float(v) for v in per_layer(th.logits.detach())]


def _top_down(
    logits: torch.Tensor,
    per_layer: Callable[[torch.Tensor], torch.Tensor],
    value: float,
    span: float,
    iters: int,
) -> None:
    """Set each layer's logit in place, top layer first, so ``per_layer(logits)[l]`` is ``value``.

    Layer l's masks depend only on the logits of layers >= l (nesting), so one 1-D bisection per
    layer, from the top down, suffices."""
    for layer in reversed(range(logits.numel())):

        def at(v: float, layer: int = layer) -> float:
            logits[layer] = v
            return float(per_layer(logits)[layer])

        logits[layer] = bisect_offset(at, value, -span, span, iters=iters)


Cached = list[tuple[Any, torch.Tensor]]  # per batch: (attention maps, padding mask (B, N))


def cached_maps(
    reducer: SttabtReducer, parts: compat.ModelParts, batches: Sequence[dict[str, torch.Tensor]]
) -> Cached:
    """The maps back-tracking reads (the ApproxNet's, or the model's own for the oracle), computed
    once per batch so every probe is a back-tracking pass only; the reducer is put in eval mode
    (deterministic attention; callers restore train modes per step)."""
    reducer.eval()
    out: Cached = []
    for inputs in batches:
        x, pad = embed(parts, inputs)
        if reducer.approx is not None:
            attn = reducer.approx.attentions(inputs)
        else:
            attn = torch.stack(dense_forward(parts, x, pad, need_attn=True).attentions)  # (L, B, H, N, N)
        out.append((attn, pad))
    return out


def _own_fraction_probe(
    reducer: SttabtReducer, parts: compat.ModelParts, cached: Cached
) -> Callable[[torch.Tensor], torch.Tensor]:
    """threshold logits (L,) -> (L,) mean fraction of real tokens each layer's threshold selects by
    itself (normalised importance > exp(θ_l), before the union with the layer above), noise-free."""
    from sttabt_edge.method.concrete import normalized_importance

    th = _thresholds(reducer)

    def probe(logits: torch.Tensor) -> torch.Tensor:
        vals = []
        for a, pad in cached:
            bt = th.masks(a, pad, logits, parts.num_prefix_tokens, reducer.p, reducer.head_reduce)
            real = pad.to(torch.float32)
            own = [
                ((normalized_importance(s, pad) > torch.exp(logits[i])).float() * real).sum(1) / real.sum(1)
                for i, s in enumerate(bt.scores)
            ]
            vals.append(torch.stack(own, dim=1))  # (B, L)
        return torch.cat(vals).mean(0)

    return probe


def _retention_probe(
    reducer: SttabtReducer, parts: compat.ModelParts, cached: Cached, noisy: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """threshold logits (L,) -> mean per-layer retention (L,) on the cached maps (see
    :func:`cached_maps`). ``noisy``: training-mode masks under a fixed concrete noise, so probes
    are deterministic."""
    th = _thresholds(reducer)

    def probe(logits: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator(device=logits.device).manual_seed(0) if noisy else None
        vals = []
        for a, pad in cached:
            bt = th.masks(a, pad, logits, parts.num_prefix_tokens, reducer.p, reducer.head_reduce, noisy, gen)
            vals.append(retention(bt.keep, pad))  # (B, L)
        return torch.cat(vals).mean(0)  # (L,)

    return probe
