"""Holding the mean retention on its target while the thresholds learn (the soft phase).

``penalty`` is the official form, ``w (r - t)^2``: a restoring force that fades as the gap
closes, so any steady pull from the distillation loss (keeping more tokens always lowers
the KD loss) settles the retention above the target. On DeiT-Tiny with KD the soft phase
drifted from 0.50 to 0.83 within 120 steps, then the hard phase snapped it back and the KD
loss jumped (issue #25): most of the run trained an operating point that is never deployed.

``lagrangian`` adds a multiplier ``lam`` on the equality constraint r = t and raises it by
dual ascent, ``lam += dual_lr * (r - t)`` each micro-batch (the constrained form of
structured-pruning work such as Wang et al. 2020 and CoFi, Xia et al. 2022). ``lam`` is the
integral of the gap, so a steady pull is met by a growing push until the mean gap is zero.
It is a buffer: checkpointed, resumed bit-exactly, never touched by the optimizer, and
updated without a host sync.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import nn

from sttabt_edge.train.config import RetentionControl

RETENTION_CONTROLS: tuple[RetentionControl, ...] = get_args(RetentionControl)


class RetentionController(nn.Module):
    """The soft phase's retention term. ``forward`` takes a (B, L) retention and returns a scalar."""

    lam: torch.Tensor

    def __init__(self, target: float, weight: float, control: RetentionControl, dual_lr: float = 1.0):
        super().__init__()
        if control not in RETENTION_CONTROLS:
            raise ValueError(f"retention control must be one of {RETENTION_CONTROLS}, got {control!r}")
        if dual_lr < 0 or weight < 0:
            raise ValueError(f"retention weight and dual_lr must be >= 0 (got {weight}, {dual_lr})")
        self.target = float(target)
        self.weight = float(weight)
        self.control = control
        self.dual_lr = float(dual_lr)
        self.register_buffer("lam", torch.zeros((), dtype=torch.float32))

    def gap(self, retention: torch.Tensor) -> torch.Tensor:
        """Mean retention minus the target: a 0-dim tensor (positive: too many tokens kept)."""
        return retention.float().mean() - self.target

    def forward(self, retention: torch.Tensor) -> torch.Tensor:
        gap = self.gap(retention)
        loss = self.weight * gap**2
        if self.control == "lagrangian":
            # a copy: the multiplier is a constant of this step's loss, and the in-place ascent below
            # must not change a value autograd saved
            loss = loss + self.lam.clone() * gap
            if self.training:  # dual ascent, in place on the device: no .item()
                self.lam.add_(self.dual_lr * gap.detach())
        return loss
