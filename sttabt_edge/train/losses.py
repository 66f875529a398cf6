"""Losses for training a sparse (token-pruned) model, and the objective they form.

Task loss (CE, or MSE for a 1-output regression head such as STS-B) + knowledge
distillation from a frozen copy of the dense model + a retention penalty pulling the
mean retention toward the target. Shared by concrete (STTABT) and the LTP / top-k
baselines; only the reducer, its parameters and its phases differ (``Phases``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sttabt_edge.bisection import bisect_to
from sttabt_edge.compat import ModelParts, model_parts
from sttabt_edge.errors import InputError
from sttabt_edge.method.distill import logits_kd
from sttabt_edge.method.sparse import dense_forward
from sttabt_edge.models.adapter import classify, embed
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.sparse_model import SparseClassifier
from sttabt_edge.train.config import SparseTrainConfig, TrainConfig
from sttabt_edge.train.engine import Objective, StepLogs, decay_groups
from sttabt_edge.train.retention import RetentionController


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE for classification; MSE when the head has one output (regression). (B, K), (B,) -> scalar.

    (B, K) float labels are soft targets (mixup / cutmix, label smoothing: train/augment.py):
    soft-target CE, -sum_k y_k log p_k averaged over the batch.
    """
    if labels.dim() == 2:
        if labels.shape != logits.shape:
            raise InputError(
                f"soft targets {tuple(labels.shape)} do not match the logits {tuple(logits.shape)}: "
                "set TrainData.num_classes to the model's head size"
            )
        return F.cross_entropy(logits.float(), labels.float())
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    return F.cross_entropy(logits.float(), labels.long())


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD on logits (KL with temperature); MSE to the teacher's output for regression."""
    if student.shape[-1] == 1:
        return F.mse_loss(student.float(), teacher.detach().float())
    return logits_kd(student.float(), teacher.float(), temperature)


def retention_penalty(retention: torch.Tensor, target: float) -> torch.Tensor:
    """(mean retention - target)^2 over a (B, L) retention; equals method.concrete.retention_loss
    on mask-mode keep masks, and also works for LTP's soft live counts."""
    return (retention.float().mean() - target) ** 2


@torch.no_grad()
def dense_logits(parts: ModelParts, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The frozen dense teacher's logits (B, K)."""
    x, pad = embed(parts, inputs)
    return classify(parts, dense_forward(parts, x, pad).prefix_hidden)


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def geometric_schedule(target: float, num_layers: int) -> list[float]:
    """Keep fractions q**(l+1) entering layer l+1 (l = 0..L-1) whose mean retention is ``target``.

    Retention entering layer l is q**l (layer 0 sees every token), so the mean is
    (1 - q**L) / (L (1 - q)); q is found by bisection. Used by the top-k and LTP baselines.
    """
    if not 1.0 / num_layers <= target <= 1.0:
        raise ValueError(
            f"target retention {target} is below 1/L = {1 / num_layers:.3f}: layer 0 sees every token"
        )

    def mean_retention(q: float) -> float:
        return 1.0 if q >= 1.0 else (1 - q**num_layers) / (num_layers * (1 - q))

    q = bisect_to(mean_retention, target, 0.0, 1.0, iters=60)
    return [max(q ** (layer + 1), 1e-6) for layer in range(num_layers)]


def constant_schedule(target: float, num_layers: int) -> list[float]:
    """One keep fraction r after layer 0 only: mean retention (1 + (L-1) r) / L = target."""
    r = (target * num_layers - 1) / max(1, num_layers - 1)
    if not 0.0 < r <= 1.0:
        raise ValueError(
            f"target retention {target} not reachable with a constant schedule on {num_layers} layers"
        )
    return [r] * num_layers


def bisect_offset(
    measure: Callable[[float], float], target: float, lo: float, hi: float, iters: int = 30
) -> float:
    """Offset whose ``measure`` (a retention, non-increasing in the offset) is closest to ``target``.

    A target outside [measure(hi), measure(lo)] silently ends at an end of the span; use
    :func:`calibrate_offset`, which checks that first.
    """
    return bisect_to(measure, target, lo, hi, iters, increasing=False)


REACH_TOL = 0.02  # a target this far outside the reachable retention range still counts as reached


class UnreachableTargetError(InputError):
    """The retention target lies outside what the reducer can give on the calibration inputs."""


def calibrate_offset(
    measure: Callable[[float], float],
    target: float,
    lo: float,
    hi: float,
    iters: int = 30,
    what: str = "thresholds",
    strict: bool = True,
) -> float:
    """:func:`bisect_offset` after checking that ``target`` is reachable on the calibration inputs.

    The reachable range is [measure(hi), measure(lo)]: its floor is what the forced tokens
    (prefix, ``min_keep``) keep however high the thresholds go, and it depends on the input
    lengths (short inputs keep a large fraction). A target more than :data:`REACH_TOL` below
    the floor (or above the ceiling) raises :class:`UnreachableTargetError` (``strict``) or
    warns; the bisection then aims at the floor (ceiling) itself, which gives the smallest
    offset reaching it rather than the end of the span.
    """
    floor, ceil = measure(hi), measure(lo)
    if not floor - REACH_TOL <= target <= ceil + REACH_TOL:
        msg = (
            f"retention target {target:g} is outside what the {what} can reach on the calibration inputs: "
            f"[{floor:.3f}, {ceil:.3f}] (the floor is the tokens always kept, a large share of short inputs). "
            "Calibrate on inputs like the deployment ones (`train --calib-on eval`: the unlabeled held-out "
            "inputs; in Python TrainData.calib) or choose a reachable target"
        )
        if strict:
            raise UnreachableTargetError(msg)
        warnings.warn(msg, stacklevel=2)
    return bisect_offset(measure, min(max(target, floor), ceil), lo, hi, iters)


class SparseObjective(Objective):
    """Task + KD + retention for ``SparseClassifier(model, reducer, mode="mask")``.

    ``set_phase(reducer, hard)`` switches the reducer between its soft (learnable) and hard
    form; ``reducer_groups`` gives the AdamW groups of the reducer's own parameters;
    ``snap()`` runs once, at the first hard step, to put the hard retention on the target
    (soft-phase noise biases it); ``regularizer()`` is the reducer's own soft-phase loss term.
    All are optional (top-k has none).
    """

    def __init__(
        self,
        model: nn.Module,
        reducer: nn.Module,
        teacher: nn.Module,
        scfg: SparseTrainConfig,
        set_phase: Callable[[nn.Module, bool], None] | None = None,
        reducer_groups: Callable[[TrainConfig], list[dict[str, Any]]] | None = None,
        checkpoint_extra: Mapping[str, nn.Module] | None = None,
        snap: Callable[[], None] | None = None,
        regularizer: Callable[[], torch.Tensor] | None = None,
    ):
        super().__init__()
        assert isinstance(reducer, Reducer)  # what SparseClassifier runs (every reducer subclasses it)
        self.sparse = SparseClassifier(model, reducer, mode="mask")
        self.teacher = freeze(teacher)
        self.teacher_parts = model_parts(teacher)
        self.scfg = scfg
        self._set_phase = set_phase
        self._reducer_groups = reducer_groups
        self._extra = dict(checkpoint_extra or {})
        self.snap = snap
        self.regularizer = regularizer  # the reducer's own loss term (official concrete: θ toward its init)
        self.retention = RetentionController(
            scfg.target_retention, scfg.retention_weight, scfg.retention_control, scfg.retention_dual_lr
        )
        self.hard = False
        if scfg.main_params == "norms_biases":  # weights (dim >= 2) stay fixed: no dW products in backward
            for p in model.parameters():
                if p.dim() >= 2:
                    p.requires_grad_(False)

    def forward(
        self, inputs: dict[str, torch.Tensor], labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, StepLogs]:
        c = self.scfg
        out = self.sparse(**inputs)
        loss = out.logits.new_zeros((), dtype=torch.float32)
        logs: StepLogs = {}
        if labels is not None and c.task_weight > 0:
            task = task_loss(out.logits, labels)
            loss = loss + c.task_weight * task
            logs["task"] = task.detach()
        if c.kd_weight > 0:
            kd = distill_loss(out.logits, dense_logits(self.teacher_parts, inputs), c.kd_temperature)
            loss = loss + c.kd_weight * kd
            logs["kd"] = kd.detach()
        if not self.hard and (c.retention_weight > 0 or c.retention_control == "lagrangian"):
            loss = loss + self.retention(out.retention)
        if self.regularizer is not None and not self.hard:
            reg = self.regularizer()
            loss = loss + reg
            logs["reg"] = reg.detach()
        logs["retention"] = out.retention.detach().float().mean()
        if c.retention_control == "lagrangian":
            logs["lam"] = self.retention.lam.detach().clone()
        logs["hard"] = torch.tensor(float(self.hard))
        return loss, logs

    def on_step(self, step: int, total: int) -> None:
        start = self.scfg.hard_start(total)
        self.hard = step >= start
        if step == start and self.snap is not None:  # a function of the weights at this step: resumable
            self.snap()
        self.sparse.train()
        self.retention.train(not self.hard)
        self.teacher.eval()
        if self.scfg.freeze_main:
            self.sparse.model.eval()  # fixed weights: no dropout noise while thresholds learn
        if self._set_phase is not None:
            self._set_phase(self.sparse.reducer, self.hard)

    def param_groups(self, cfg: TrainConfig) -> list[dict[str, Any]]:
        groups = (
            []
            if self.scfg.freeze_main
            else decay_groups(
                dict(self.sparse.model.named_parameters()), cfg.optim.lr, cfg.optim.weight_decay
            )
        )
        groups += self._reducer_groups(cfg) if self._reducer_groups is not None else []
        if not groups:
            raise ValueError("nothing to train: freeze_main=True and the reducer has no trainable parameters")
        return groups

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        # the multiplier is state only under "lagrangian"; penalty runs keep their checkpoint layout
        lagrangian = self.scfg.retention_control == "lagrangian"
        return {
            "model": self.sparse.model,
            **self._extra,
            **({"retention": self.retention} if lagrangian else {}),
        }
