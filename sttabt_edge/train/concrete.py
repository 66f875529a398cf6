"""Concrete masking: learn STTABT's per-layer thresholds (and fine-tune the model) for a retention target.

``SparseClassifier(model, SttabtReducer(approx, thresholds=ConcreteThresholds(L)), mode="mask")``
is trained with task loss + KD from a frozen dense copy + a retention penalty. In the soft
phase the thresholds are in train mode (concrete noise, hard forward masks, soft
straight-through gradients); in the final hard phase (``hard_frac`` of the steps) they
are frozen and hard, and only the model is fine-tuned to the masks it will see at
inference. ``freeze_main=True`` trains the thresholds (+ ApproxNet) only.

Thresholds start where the retention target is already met on a few batches
(``init="calibrate"``), so training refines *which* tokens to keep instead of first
spending steps dragging the pruning rate from 0.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sttabt_edge import compat
from sttabt_edge.method.approxnet import ApproxNet
from sttabt_edge.method.backtrack import retention
from sttabt_edge.method.concrete import ConcreteThresholds
from sttabt_edge.method.concrete_official import OfficialConcrete
from sttabt_edge.method.sparse import dense_forward
from sttabt_edge.models.adapter import embed
from sttabt_edge.reducers.sttabt import SttabtReducer
from sttabt_edge.train.artifacts import load_sttabt, save_trained
from sttabt_edge.train.checkpoint import model_fingerprint
from sttabt_edge.train.config import SparseTrainConfig, TrainConfig
from sttabt_edge.train.data import TrainData
from sttabt_edge.train.distributed import Dist, distributed
from sttabt_edge.train.engine import FitResult, decay_groups, fit
from sttabt_edge.train.losses import SparseObjective, UnreachableTargetError, bisect_offset, calibrate_offset

# the official concrete constants: temperature, and the occupancy-loss factor per family
# (concrete_loss_encoder_mask_avg_factor: 1e-3 for GLUE, 100 for ViT)
OFFICIAL_TEMPERATURE = 0.1
OFFICIAL_RATIO_WEIGHT = {"bert": 1e-3, "vit": 100.0}

__all__ = [
    "UnreachableTargetError", "load_sttabt", "shape_thresholds", "snap_thresholds", "train_concrete", "union_thresholds",
]


def calibration_batches(
    data: TrainData, scfg: SparseTrainConfig, cfg: TrainConfig, device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """``scfg.calib_samples`` random examples of ``data.calib`` (default: training) as tensors on
    ``device`` (see TrainData). Warns when they are much shorter or longer than the held-out inputs."""
    batches = data.calibration_batches(scfg.calib_samples, cfg.seed, cfg.max_length)
    warn_length_shift(data, batches, cfg.max_length)
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
            "calibrated on them give a different retention on held-out inputs; set TrainData.calib to "
            "unlabeled inputs like the deployment ones (e.g. the held-out inputs)",
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
    return _snap(reducer, _retention_probe(reducer, parts, batches, noisy), target, span, strict)


def _snap(
    reducer: SttabtReducer, per_layer: Callable[[torch.Tensor], torch.Tensor], target: float, span: float, strict: bool
) -> float:
    """:func:`snap_thresholds` on a built retention probe (see :func:`_retention_probe`)."""
    th = reducer.thresholds
    base = th.logits.detach().clone()

    def mean_retention(offset: float) -> float:
        return float(per_layer(base + offset).mean())

    offset = calibrate_offset(mean_retention, target, -span, span, what="STTABT thresholds", strict=strict)
    th.logits.copy_(base + offset)
    return offset


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
    th = reducer.thresholds
    logits = th.logits.detach().clone()
    per_layer = _retention_probe(reducer, parts, batches, noisy)
    for layer in reversed(range(logits.numel())):

        def layer_retention(value: float, layer: int = layer) -> float:
            logits[layer] = value
            return float(per_layer(logits)[layer])

        logits[layer] = bisect_offset(layer_retention, target, -span, span, iters=20)
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
    th = reducer.thresholds
    per_layer, own = _retention_probe(reducer, parts, batches, noisy), _own_fraction_probe(reducer, parts, batches)
    logits = th.logits.detach().clone()

    def shape(q: float) -> float:
        for layer in reversed(range(logits.numel())):
            def frac(value: float, layer: int = layer) -> float:
                logits[layer] = value
                return float(own(logits)[layer])

            logits[layer] = bisect_offset(frac, q, -span, span, iters=16)
        return float(per_layer(logits).mean())

    lo, hi = 1e-3, 1.0
    for _ in range(12):  # retention grows with q
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if shape(mid) < target else (lo, mid)
    shape((lo + hi) / 2)
    th.logits.copy_(logits)
    _snap(reducer, per_layer, target, span, strict)
    return [float(v) for v in per_layer(th.logits.detach())]


def _own_fraction_probe(
    reducer: SttabtReducer, parts: compat.ModelParts, batches: Sequence[dict[str, torch.Tensor]]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """threshold logits (L,) -> (L,) mean fraction of real tokens each layer's threshold selects by
    itself (normalised importance > exp(θ_l), before the union with the layer above), noise-free."""
    from sttabt_edge.method.concrete import normalized_importance

    reducer.eval()
    th = reducer.thresholds
    cached = [(_maps(reducer, parts, b), embed(parts, b)[1]) for b in batches]

    def probe(logits: torch.Tensor) -> torch.Tensor:
        vals = []
        for a, pad in cached:
            bt = th.masks(a, pad, logits, parts.num_prefix_tokens, reducer.p, reducer.head_reduce)
            real = pad.to(torch.float32)
            own = [((normalized_importance(s, pad) > torch.exp(logits[i])).float() * real).sum(1) / real.sum(1)
                   for i, s in enumerate(bt.scores)]
            vals.append(torch.stack(own, dim=1))  # (B, L)
        return torch.cat(vals).mean(0)

    return probe


def _maps(reducer: SttabtReducer, parts: compat.ModelParts, inputs: dict[str, torch.Tensor]) -> Any:
    """The attention maps back-tracking reads: the ApproxNet's, or the model's own (oracle)."""
    if reducer.approx is not None:
        return reducer.approx.attentions(inputs)
    x, pad = embed(parts, inputs)
    return torch.stack(dense_forward(parts, x, pad, need_attn=True).attentions)  # (L, B, H, N, N)


def _retention_probe(
    reducer: SttabtReducer, parts: compat.ModelParts, batches: Sequence[dict[str, torch.Tensor]], noisy: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """threshold logits (L,) -> mean per-layer retention (L,) on ``batches``, from attention maps
    computed once (each probe is a back-tracking pass, no model pass). ``noisy``: training-mode
    masks under a fixed concrete noise, so probes are deterministic."""
    reducer.eval()  # deterministic attention (callers restore train modes per step)
    th = reducer.thresholds
    cached = [(_maps(reducer, parts, b), embed(parts, b)[1]) for b in batches]

    def probe(logits: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator(device=logits.device).manual_seed(0) if noisy else None
        vals = []
        for a, pad in cached:
            bt = th.masks(a, pad, logits, parts.num_prefix_tokens, reducer.p, reducer.head_reduce, noisy, gen)
            vals.append(retention(bt.keep, pad))  # (B, L)
        return torch.cat(vals).mean(0)  # (L,)

    return probe


def snap_without_hard_phase(objective: SparseObjective, res: FitResult, scfg: SparseTrainConfig) -> None:
    """A finished run whose schedule left no hard-mask phase snaps its final thresholds instead."""
    if res.finished and objective.snap is not None and scfg.hard_start(res.total_steps) == res.total_steps:
        objective.snap()


def concrete_fingerprint(model: nn.Module, approx: ApproxNet, scfg: SparseTrainConfig) -> dict[str, Any]:
    return {
        **model_fingerprint("concrete", model),
        "heads": int(model.config.num_attention_heads),
        "factor": approx.factor,
        "target_retention": scfg.target_retention,
        "freeze_main": scfg.freeze_main,
        "train_approx": scfg.train_approx,
    }


def build_objective(
    model: nn.Module,
    approx: ApproxNet,
    scfg: SparseTrainConfig,
    calib: Sequence[dict[str, torch.Tensor]] = (),
) -> SparseObjective:
    """The objective and its reducer (thresholds at 0 or ``scfg.init``; snapped to the target on ``calib``
    at the first hard step)."""
    num_layers = int(model.config.num_hidden_layers)
    init = 0.0 if scfg.init == "calibrate" else float(scfg.init)
    official = scfg.concrete == "official"
    thresholds: ConcreteThresholds | OfficialConcrete = (
        OfficialConcrete(num_layers, init, OFFICIAL_TEMPERATURE, scfg.min_keep)
        if official
        else ConcreteThresholds(num_layers, init, scfg.temperature, scfg.min_keep)
    )
    if official:  # the official loss: task (+ KD) + 1e-3 Σ (θ - init)² + factor · (occupancy - target)²
        family = compat.model_parts(model).family
        scfg = scfg.replace(retention_weight=OFFICIAL_RATIO_WEIGHT[family])
    reducer = SttabtReducer(approx, thresholds=thresholds, p=scfg.p, head_reduce=scfg.head_reduce)
    train_approx = scfg.train_approx
    for p in approx.parameters():
        p.requires_grad_(train_approx)
    for p in model.parameters():
        p.requires_grad_(not scfg.freeze_main)

    def set_phase(red: nn.Module, hard: bool) -> None:
        red.thresholds.train(not hard)  # hard phase: deterministic hard masks, thresholds get no gradient
        red.approx.eval()  # dropout off: masks follow the predicted attention, not noise

    def groups(cfg: TrainConfig) -> list[dict[str, Any]]:
        thr_lr = cfg.lr * 10 if official else scfg.threshold_lr  # official: p_logit at 10x the model's lr
        out = [{"params": [thresholds.logits], "lr": thr_lr, "weight_decay": 0.0, "clip": "thr"}]
        if train_approx:
            lr = cfg.lr * scfg.approx_lr_scale
            out += decay_groups(dict(approx.named_parameters()), lr, cfg.weight_decay, clip="approx")
        return out

    def snap() -> None:  # mid-run: a finished soft phase is not thrown away, so warn only
        snap_thresholds(reducer, compat.model_parts(model), calib, scfg.target_retention, strict=False)

    teacher = copy.deepcopy(model)
    return SparseObjective(
        model,
        reducer,
        teacher,
        scfg,
        set_phase,
        groups,
        {"approx": approx, "thresholds": thresholds},
        snap if scfg.snap and calib else None,
        thresholds.regularizer if official else None,
    )


def train_concrete(
    model: nn.Module,
    approx: ApproxNet,
    data: TrainData,
    target_retention: float | None = None,
    cfg: TrainConfig | None = None,
    freeze_main: bool | None = None,
    kd_weight: float | None = None,
    retention_weight: float | None = None,
    scfg: SparseTrainConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    source_dir: str | Path | None = None,
) -> tuple[nn.Module, SttabtReducer]:
    """Train STTABT for ``target_retention``; returns (model, reducer) in inference form.

    Keyword overrides (target, freeze_main, kd/retention weights) are applied on top of
    ``scfg``. ``out`` receives the whole STTABT model (see train/artifacts.py) plus
    checkpoints and metrics; ``source_dir`` (the dense model's folder) provides the
    tokenizer / synsets files copied into it.
    """
    cfg = cfg or TrainConfig()
    overrides = {
        k: v
        for k, v in {
            "target_retention": target_retention,
            "freeze_main": freeze_main,
            "kd_weight": kd_weight,
            "retention_weight": retention_weight,
        }.items()
        if v is not None
    }
    scfg = (scfg or SparseTrainConfig()).replace(**overrides)
    if out is None:
        raise ValueError("train_concrete needs an output directory (out=...)")
    out = Path(out)
    with distributed(cfg) as dist:
        model.to(dist.device)
        approx.to(dist.device)
        source = data.source(cfg.batch_size, cfg.seed, cfg.augment, cfg.max_length, cfg.bucket_batches)
        calib = calibration_batches(data, scfg, cfg, dist.device)
        objective = build_objective(model, approx, scfg, calib)
        reducer: SttabtReducer = objective.sparse.reducer
        if scfg.init == "calibrate":
            calibrate = {"constant": shape_thresholds, "union": union_thresholds, "shared": snap_thresholds}[
                scfg.init_schedule
            ]
            # ste: the noisy training-mode retention; official (no noise): the hard masks
            noisy = scfg.concrete != "official"
            calibrate(reducer, objective.sparse.parts, calib, scfg.target_retention, noisy=noisy)
            if isinstance(reducer.thresholds, OfficialConcrete):
                reducer.thresholds.set_init()  # the regulariser pulls toward the calibrated start
        res = fit(
            objective,
            source,
            cfg,
            out,
            dist,
            concrete_fingerprint(model, approx, scfg),
            held_out_evaluator(model, reducer, data, cfg, dist),
            resume,
            name=f"concrete r={scfg.target_retention:g}",
        )
        snap_without_hard_phase(objective, res, scfg)
        model.eval()
        reducer.eval()
        if dist.is_main and res.finished:
            meta = trained_meta(cfg, scfg, data, res, hard_schedule(objective, calib))
            save_trained(out, model, reducer, meta, source_dir, approx=approx)
        dist.barrier()
    return model, reducer


@torch.no_grad()
def hard_schedule(objective: SparseObjective, batches: Sequence[dict[str, torch.Tensor]]) -> list[float]:
    """Hard per-layer retention on the calibration batches: the keep schedule the thresholds give."""
    sc = objective.sparse.eval()
    rets = [sc(**b).retention for b in batches]
    return [float(v) for v in torch.cat(rets).mean(0)]


def held_out_evaluator(
    model: nn.Module, reducer: SttabtReducer, data: TrainData, cfg: TrainConfig, dist: Dist
) -> Any:
    """Task metric + retention on the held-out set, with real removal (what inference does)."""
    if not data.eval:
        return None
    from sttabt_edge.evaluate import evaluate

    examples = data.eval_examples(cfg.max_eval_samples)

    def run() -> dict[str, float]:
        res = evaluate(
            model,
            reducer,
            examples,
            image=data.image,
            text=data.text,
            batch_size=cfg.eval_batch_size,
            task=data.task,
            max_length=cfg.max_length,
            progress=False,
        )
        return {**res.metrics, "retention": res.retention, "flops_ratio": res.flops_ratio}

    return run


def trained_meta(
    cfg: TrainConfig, scfg: SparseTrainConfig, data: TrainData, res: Any, schedule: list[float]
) -> dict:
    pre: dict[str, Any] = (
        {"image": data.image.to_dict()}
        if data.image is not None
        else {"text": {"max_length": cfg.max_length, "tokenizer": "model/tokenizer.json"}}
    )
    return {
        "preprocessing": pre,
        "task": data.task,
        "train_config": cfg.to_dict(),
        "sparse_config": scfg.to_dict(),
        "step": res.step,
        "keep_schedule": schedule,
        "eval": res.eval,
        "final_train_logs": res.last_logs,
        "step_time_s": res.step_time,
    }
