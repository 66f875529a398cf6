"""Turning ``--budget-minutes`` into optimizer steps: measure a step, then divide.

A fixed step count would take minutes on a GPU and hours on a Pi; the user states time, so
each trainer's steps come from its measured step time on this machine (forward + backward of
a few real batches, plus a margin for the optimizer and logging)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from sttabt_edge.train.data import BatchSource
from sttabt_edge.train.engine import Objective

STEP_MARGIN = 1.2  # optimizer step, clipping, logging and checkpoints on top of forward + backward


@dataclass(frozen=True)
class Allocation:
    seconds: float  # the share of the budget
    step_seconds: float | None  # measured (None: steps given, nothing measured)
    steps: int


def step_seconds(objective: Objective, source: BatchSource, n: int = 6) -> float:
    """Median seconds of one training step of ``objective`` on ``source``'s first ``n`` batches,
    each timed on its second pass: the first pass of a new input shape pays one-off kernel and
    allocator setup (oneDNN primitives are cached per shape), which a long run pays once."""
    objective.on_step(0, 1000)  # the training modes of an early (soft-phase) step
    times = []
    for k in range(n):
        inputs, labels = source.get(k)
        x = {name: torch.from_numpy(v) for name, v in inputs.items()}
        y = None if labels is None else torch.from_numpy(labels)
        for rep in range(2):
            t0 = time.perf_counter()
            loss, _ = objective(x, y)
            loss.backward()
            if rep:
                times.append(time.perf_counter() - t0)
    objective.zero_grad(set_to_none=True)
    return statistics.median(times) * STEP_MARGIN


def allocate(seconds: float, per_step: float, min_steps: int, max_steps: int | None = None) -> Allocation:
    """Steps that fit ``seconds``; 0 when fewer than ``min_steps`` fit (too short to be worth it)."""
    steps = int(seconds // max(per_step, 1e-6))
    if max_steps is not None:
        steps = min(steps, max_steps)
    return Allocation(seconds, per_step, steps if steps >= min_steps else 0)
