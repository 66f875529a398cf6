"""Train the baselines the way STTABT is trained, so comparisons are fair.

* ``ltp``: LTP's learned per-layer thresholds. Soft masks (``LtpReducer(soft=True)``) in
  mask mode with task loss + KD + the retention penalty, then a hard phase fine-tuning
  the model under hard masks. Thresholds start calibrated to a geometric keep schedule
  with the target mean retention.
* ``topk``: EViT-style top-k by CLS attention has no learnable parameters; the model is
  fine-tuned with KD at a fixed keep schedule reaching the target (mask mode, which
  equals removal).

Same output layout and loader as concrete (train/artifacts.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from sttabt_edge.reducers import LtpReducer
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.factory import build
from sttabt_edge.reducers.spec import ReducerOptions, ReducerSpec, spec_from_options
from sttabt_edge.sparse_model import SparseClassifier
from sttabt_edge.train.artifacts import save_trained
from sttabt_edge.train.checkpoint import model_fingerprint
from sttabt_edge.train.concrete import (
    calibration_batches,
    hard_schedule,
    held_out_evaluator,
    snap_without_hard_phase,
    trained_meta,
)
from sttabt_edge.train.config import SparseTrainConfig, TrainConfig
from sttabt_edge.train.data import TrainData
from sttabt_edge.train.distributed import distributed
from sttabt_edge.train.engine import fit
from sttabt_edge.train.hf import hf_config
from sttabt_edge.train.losses import SparseObjective, calibrate_offset, constant_schedule, geometric_schedule

METHODS = ("ltp", "topk")


def keep_schedule(target: float, num_layers: int, kind: str = "geometric") -> list[float]:
    """Per-layer keep fractions (entry l: tokens entering layer l+1) for a mean retention target."""
    if kind == "geometric":
        return geometric_schedule(target, num_layers)
    if kind == "constant":
        return constant_schedule(target, num_layers)
    raise ValueError(f"schedule must be 'geometric' or 'constant', got {kind!r}")


@torch.no_grad()
def snap_ltp(
    model: nn.Module,
    reducer: LtpReducer,
    batches: Sequence[dict[str, torch.Tensor]],
    target: float,
    soft: bool = False,
    span: float = 16.0,
    iters: int = 12,
    strict: bool = True,
) -> float:
    """Add one offset to every LTP threshold so the retention on ``batches`` is ``target``.

    ``soft=False``: hard retention (real removal), as at inference; ``soft=True``: the
    soft-mask retention (sum of sigmoid weights) the training penalty sees, which is much
    lower for the same thresholds. Same role as
    :func:`sttabt_edge.train.concrete.snap_thresholds`, including the reachability check
    (``strict``: raise, else warn). Each probe is a pruned model pass.
    """
    sc = SparseClassifier(model, reducer, mode="mask" if soft else "remove").eval()
    reducer.soft = soft
    base = reducer.thresholds.detach().clone()

    def mean_retention(offset: float) -> float:
        reducer.thresholds.copy_(base + offset)
        return float(torch.cat([sc(**b).retention for b in batches]).mean())

    offset = calibrate_offset(
        mean_retention, target, -span, span, iters, what="LTP thresholds", strict=strict
    )
    reducer.thresholds.copy_(base + offset)
    return offset


def build_baseline(
    method: str,
    model: nn.Module,
    scfg: SparseTrainConfig,
    calib: Sequence[dict[str, torch.Tensor]] = (),
) -> SparseObjective:
    """Objective for ``method`` (reducer, its phases, parameter groups and hard-phase snap): the
    spec its options describe (``spec_from_options``: the keep schedule, one threshold per layer),
    trained by the method's own objective (:data:`OBJECTIVES`)."""
    objective = OBJECTIVES.get(method)
    if objective is None:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    num_layers = int(hf_config(model).num_hidden_layers)
    schedule = keep_schedule(scfg.target_retention, num_layers, scfg.schedule)
    for p in model.parameters():
        p.requires_grad_(not scfg.freeze_main)
    teacher = copy.deepcopy(model)
    spec = spec_from_options(method, ReducerOptions(keep_ratio=tuple(schedule), num_layers=num_layers))
    return objective(spec, model, teacher, scfg, calib)


def _topk_objective(
    spec: ReducerSpec,
    model: nn.Module,
    teacher: nn.Module,
    scfg: SparseTrainConfig,
    calib: Sequence[dict[str, torch.Tensor]],
) -> SparseObjective:
    """EViT top-k at the schedule: only the model trains."""
    if scfg.freeze_main:
        raise ValueError("topk has no learnable parameters: freeze_main=True leaves nothing to train")
    fixed = scfg.replace(retention_weight=0.0, hard_frac=0.0)  # retention is fixed by the schedule
    return SparseObjective(model, build(spec), teacher, fixed)


def _ltp_objective(
    spec: ReducerSpec,
    model: nn.Module,
    teacher: nn.Module,
    scfg: SparseTrainConfig,
    calib: Sequence[dict[str, torch.Tensor]],
) -> SparseObjective:
    """LTP: soft masks, then hard; its thresholds train at ``threshold_lr``."""
    train_spec = spec.replace(temperature=scfg.ltp.temperature, min_keep=scfg.ltp.min_keep, soft=True)
    ltp = cast(LtpReducer, build(train_spec))  # OBJECTIVES: an LtpSpec

    def set_phase(red: nn.Module, hard: bool) -> None:  # red is ``ltp``
        ltp.soft = not hard

    def groups(cfg: TrainConfig) -> list[dict[str, Any]]:
        return [{"params": [ltp.thresholds], "lr": scfg.threshold_lr, "weight_decay": 0.0, "clip": "thr"}]

    def snap() -> None:  # mid-run: warn only (see concrete.build_objective)
        snap_ltp(model, ltp, calib, scfg.target_retention, strict=False)

    return SparseObjective(
        model,
        ltp,
        teacher,
        scfg,
        set_phase,
        groups,
        {"thresholds": ltp},
        snap if scfg.snap and calib else None,
    )


Objective = Callable[
    [ReducerSpec, nn.Module, nn.Module, SparseTrainConfig, Sequence[dict[str, torch.Tensor]]], SparseObjective
]
OBJECTIVES: dict[str, Objective] = {"ltp": _ltp_objective, "topk": _topk_objective}  # keys: METHODS


def baseline_fingerprint(method: str, model: nn.Module, scfg: SparseTrainConfig) -> dict[str, Any]:
    return {
        **model_fingerprint(f"baseline-{method}", model),
        "target_retention": scfg.target_retention,
        "freeze_main": scfg.freeze_main,
    }


def train_baseline(
    method: str,
    model: nn.Module,
    data: TrainData,
    target_retention: float | None = None,
    cfg: TrainConfig | None = None,
    scfg: SparseTrainConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    source_dir: str | Path | None = None,
) -> tuple[nn.Module, Reducer]:
    """Train an LTP or top-k baseline for ``target_retention``; returns (model, reducer) in inference form."""
    cfg = cfg or TrainConfig()
    scfg = scfg or SparseTrainConfig()
    if target_retention is not None:
        scfg = scfg.replace(target_retention=target_retention)
    if out is None:
        raise ValueError("train_baseline needs an output directory (out=...)")
    out = Path(out)
    with distributed(cfg) as dist:
        model.to(dist.device)
        source = data.training_source(cfg)
        calib = calibration_batches(data, scfg, cfg, dist.device)
        objective = build_baseline(method, model, scfg, calib)
        reducer = objective.sparse.reducer
        if isinstance(reducer, LtpReducer):  # method "ltp" (build_baseline)
            schedule = keep_schedule(scfg.target_retention, len(objective.sparse.parts.layers), scfg.schedule)
            reducer.calibrate(objective.sparse.parts, merge_batches(calib), schedule)  # per-layer shape
            snap_ltp(model, reducer, calib, scfg.target_retention, soft=True)  # level: soft retention
        res = fit(
            objective,
            source,
            cfg,
            out,
            dist,
            baseline_fingerprint(method, model, scfg),
            held_out_evaluator(model, reducer, data, cfg, dist),
            resume,
            name=f"{method} r={scfg.target_retention:g}",
        )
        snap_without_hard_phase(objective, res, scfg)
        model.eval()
        reducer.eval()
        if isinstance(reducer, LtpReducer):
            reducer.soft = False
        if dist.is_main and res.finished:
            meta = trained_meta(cfg, scfg, data, res, hard_schedule(objective, calib))
            save_trained(out, model, reducer, meta, source_dir)
        dist.barrier()
    return model, reducer


def merge_batches(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One batch from several; right-padded (B, N_i) text inputs are padded to the longest N.

    The padding value (0) only lands where attention_mask is 0, so the pad id does not matter.
    """

    def cat(ts: list[torch.Tensor]) -> torch.Tensor:
        if ts[0].dim() != 2:
            return torch.cat(ts)
        width = max(t.shape[1] for t in ts)
        return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in ts])

    return {k: cat([b[k] for b in batches]) for k in batches[0]}
