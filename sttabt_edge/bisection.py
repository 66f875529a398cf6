"""Bisection on one number: the loop behind every search for a knob (a threshold offset, a schedule's
ratio, one keep ratio for a retention target or within an accuracy budget).

Pure Python; the callers measure (a retention, an accuracy) and decide which half to keep.
"""

from __future__ import annotations

from collections.abc import Callable


def bisect(go_up: Callable[[float], bool], lo: float, hi: float, iters: int) -> float:
    """``iters`` halvings of [lo, hi]: the upper half where ``go_up(mid)``, else the lower; returns the
    last interval's midpoint. ``go_up`` is called once per step, at each midpoint in turn (callers
    that keep their probes rely on that order)."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if go_up(mid) else (lo, mid)
    return (lo + hi) / 2


def bisect_to(
    measure: Callable[[float], float],
    target: float,
    lo: float,
    hi: float,
    iters: int,
    increasing: bool = True,
) -> float:
    """Where a monotone ``measure`` (``increasing`` or non-increasing in its argument) meets ``target``
    within [lo, hi]; a target outside the measured range ends at an end of the span."""
    if increasing:
        return bisect(lambda x: measure(x) < target, lo, hi, iters)
    return bisect(lambda x: measure(x) > target, lo, hi, iters)
