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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sttabt_edge import compat
from sttabt_edge.method.approxnet import ApproxNet
from sttabt_edge.method.concrete import ConcreteThresholds
from sttabt_edge.method.concrete_official import OfficialConcrete
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.sttabt import SttabtReducer
from sttabt_edge.train.artifacts import load_sttabt, save_trained
from sttabt_edge.train.calibrate import (
    calibration_batches,
    shape_thresholds,
    snap_thresholds,
    union_thresholds,
)
from sttabt_edge.train.checkpoint import model_fingerprint
from sttabt_edge.train.config import SparseTrainConfig, TrainConfig
from sttabt_edge.train.data import TrainData
from sttabt_edge.train.distributed import Dist, distributed
from sttabt_edge.train.engine import FitResult, decay_groups, fit
from sttabt_edge.train.hf import hf_config
from sttabt_edge.train.losses import SparseObjective, UnreachableTargetError

# the official concrete constants: temperature, and the occupancy-loss factor per family
# (concrete_loss_encoder_mask_avg_factor: 1e-3 for GLUE, 100 for ViT)
OFFICIAL_TEMPERATURE = 0.1
OFFICIAL_RATIO_WEIGHT = {"bert": 1e-3, "vit": 100.0}

__all__ = [
    "UnreachableTargetError",
    "calibration_batches",
    "load_sttabt",
    "shape_thresholds",
    "snap_thresholds",
    "train_concrete",
    "union_thresholds",
]


def snap_without_hard_phase(objective: SparseObjective, res: FitResult, scfg: SparseTrainConfig) -> None:
    """A finished run whose schedule left no hard-mask phase snaps its final thresholds instead."""
    if res.finished and objective.snap is not None and scfg.hard_start(res.total_steps) == res.total_steps:
        objective.snap()


def concrete_fingerprint(model: nn.Module, approx: ApproxNet, scfg: SparseTrainConfig) -> dict[str, Any]:
    return {
        **model_fingerprint("concrete", model),
        "heads": int(hf_config(model).num_attention_heads),
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
    num_layers = int(hf_config(model).num_hidden_layers)
    init = 0.0 if scfg.init == "calibrate" else float(scfg.init)
    settings = scfg.sttabt
    official = settings.concrete == "official"
    thresholds: ConcreteThresholds | OfficialConcrete = (
        OfficialConcrete(num_layers, init, OFFICIAL_TEMPERATURE, settings.min_keep)
        if official
        else ConcreteThresholds(num_layers, init, settings.temperature, settings.min_keep)
    )
    if official:  # the official loss: task (+ KD) + 1e-3 Σ (θ - init)² + factor · (occupancy - target)²
        family = compat.model_parts(model).family
        scfg = scfg.replace(retention_weight=OFFICIAL_RATIO_WEIGHT[family])
    reducer = SttabtReducer(approx, thresholds=thresholds, p=settings.p, head_reduce=settings.head_reduce)
    train_approx = scfg.train_approx
    for p in approx.parameters():
        p.requires_grad_(train_approx)
    for p in model.parameters():
        p.requires_grad_(not scfg.freeze_main)

    def set_phase(red: nn.Module, hard: bool) -> None:  # red is ``reducer``: its thresholds and approx
        thresholds.train(not hard)  # hard phase: deterministic hard masks, thresholds get no gradient
        approx.eval()  # dropout off: masks follow the predicted attention, not noise

    def groups(cfg: TrainConfig) -> list[dict[str, Any]]:
        thr_lr = (
            cfg.optim.lr * 10 if official else scfg.threshold_lr
        )  # official: p_logit at 10x the model's lr
        out = [{"params": [thresholds.logits], "lr": thr_lr, "weight_decay": 0.0, "clip": "thr"}]
        if train_approx:
            lr = cfg.optim.lr * scfg.approx_lr_scale
            out += decay_groups(dict(approx.named_parameters()), lr, cfg.optim.weight_decay, clip="approx")
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
        thresholds.regularizer if isinstance(thresholds, OfficialConcrete) else None,  # i.e. official
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
        source = data.training_source(cfg)
        calib = calibration_batches(data, scfg, cfg, dist.device)
        objective = build_objective(model, approx, scfg, calib)
        reducer = objective.sparse.reducer
        assert isinstance(reducer, SttabtReducer)  # build_objective's
        if scfg.init == "calibrate":
            calibrate = {"constant": shape_thresholds, "union": union_thresholds, "shared": snap_thresholds}[
                scfg.init_schedule
            ]
            # ste: the noisy training-mode retention; official (no noise): the hard masks
            noisy = scfg.sttabt.concrete != "official"
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
            held_out_evaluator(model, reducer, data, cfg, dist, objective),
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
    model: nn.Module,
    reducer: Reducer,
    data: TrainData,
    cfg: TrainConfig,
    dist: Dist,
    objective: SparseObjective | None = None,
) -> Any:
    """Task metric + retention on the held-out set, with real removal (what inference does).

    With ``objective`` (concrete), an evaluation in the soft phase first snaps a copy of the thresholds to
    the target on the hard masks, as the hard phase will: unsnapped soft-phase thresholds give a hard
    retention far from the target (calibrated under concrete noise: 1.0 on DeiT-Tiny at step 100 of a
    0.5 run), so the curve of accuracy against minutes would compare other operating points. The
    thresholds are restored afterwards; training never sees the snap.
    """
    if not data.eval:
        return None
    from sttabt_edge.evaluate import evaluate
    from sttabt_edge.sparse_model import SparseClassifier

    examples = data.eval_examples(cfg.eval.max_samples)

    def run() -> dict[str, float]:
        if objective is None or objective.snap is None or objective.hard:
            return _evaluate_once()
        assert isinstance(reducer, SttabtReducer) and reducer.thresholds is not None  # objective's
        logits = reducer.thresholds.logits
        saved = logits.detach().clone()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unreachable target is reported by the hard phase's snap
            objective.snap()
        try:
            return _evaluate_once()
        finally:
            with torch.no_grad():
                logits.copy_(saved)

    def _evaluate_once() -> dict[str, float]:
        res = evaluate(
            SparseClassifier(model, reducer),
            examples,
            image=data.image,
            text=data.text,
            batch_size=cfg.eval.batch_size,
            task=data.task,
            max_length=cfg.data.max_length,
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
        else {"text": {"max_length": cfg.data.max_length, "tokenizer": "model/tokenizer.json"}}
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
