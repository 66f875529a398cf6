"""The choices ``compress`` makes, as small pure functions: the held-out split and the
accuracy-budgeted search (the retention bisection is train/sweep.bisect_knob). No model here: each takes a measuring callable,
so the logic is tested on its own (tests/compress/test_compress.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sttabt_edge.bisection import bisect
from sttabt_edge.errors import InputError


@dataclass(frozen=True)
class Point:
    """One measured operating point on the held-out split."""

    kind: str  # "dense" | "topk" (training-free back-tracking, one keep ratio) | "concrete" (trained thresholds)
    keep_ratio: float | None  # topk's knob; None for trained thresholds
    accuracy: float  # percent
    retention: float  # mean fraction of real tokens entering each layer
    occupancy: float  # the paper's metric (L+1 entries, padded length)
    flops_ratio: float  # vs dense, ApproxNet and back-tracking included
    target_retention: float | None = None  # concrete: what it was trained for

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_holdout(
    n: int, size: int, seed: int, lengths: Sequence[int] | None = None, min_tokens: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held) indices: ``size`` random examples of at least ``min_tokens`` tokens held out.

    Text data such as SST-2 train is mostly short sub-phrases, unlike what is deployed
    (sentences): the held-out split keeps the sentence-like ones, so the accuracy it measures
    is of inputs like the real ones."""
    pool = np.arange(n)
    if lengths is not None and min_tokens > 0:
        pool = pool[np.asarray(lengths) >= min_tokens]
    if len(pool) < size:
        raise InputError(
            f"only {len(pool)} training examples of >= {min_tokens} tokens; lower --holdout to "
            f"at most {len(pool)} or --holdout-min-tokens, or pass --holdout-data"
        )
    held = np.sort(np.random.default_rng([seed, 7]).permutation(pool)[:size])
    fit = np.setdiff1d(np.arange(n), held, assume_unique=True)
    if len(fit) == 0:
        raise InputError(f"--holdout {size} leaves no training examples")
    return fit, held


def contained_in(texts: Sequence[str], held: Sequence[str]) -> np.ndarray:
    """Bool mask: which of ``texts`` occur inside a held-out text (case-insensitive).

    SST-2's training set holds every sub-phrase of its sentences with its own label: training
    on the sub-phrases of a held-out sentence would leak its label into the selection."""
    sep = "\x00"
    haystack = sep + sep.join(t.lower() for t in held) + sep
    return np.fromiter((t.lower() in haystack for t in texts), dtype=bool, count=len(texts))


def within(point: Point, dense_accuracy: float, max_drop: float) -> bool:
    return dense_accuracy - point.accuracy <= max_drop + 1e-9


def search_keep_ratio(
    measure: Callable[[float], Point],
    dense_accuracy: float,
    max_drop: float,
    lo: float = 0.02,
    hi: float = 1.0,
    steps: int = 7,
) -> list[Point]:
    """Bisect the keep ratio for the lowest one whose accuracy stays within ``max_drop`` points
    of dense. Accuracy is nearly but not exactly monotone in the ratio, so every probe is kept
    and :func:`best_point` picks among all measured ones. -> the probes, in order."""
    probes = []

    def over_budget(ratio: float) -> bool:  # then the lowest ratio within budget is higher
        probes.append(measure(ratio))
        return not within(probes[-1], dense_accuracy, max_drop)

    bisect(over_budget, lo, hi, steps)
    return probes


def best_point(points: Sequence[Point], dense_accuracy: float, max_drop: float) -> Point | None:
    """The least retention among points within budget (ties: the more accurate), or None."""
    ok = [p for p in points if within(p, dense_accuracy, max_drop)]
    return min(ok, key=lambda p: (p.retention, -p.accuracy)) if ok else None


def first_failure(
    points: Sequence[Point], dense_accuracy: float, max_drop: float, best: Point | None
) -> Point | None:
    """The most accurate training-free probe that missed the budget below ``best``'s retention:
    where trained thresholds (which fine-tune the model) are worth a try."""
    below = [
        p
        for p in points
        if not within(p, dense_accuracy, max_drop) and (best is None or p.retention < best.retention)
    ]
    return max(below, key=lambda p: p.accuracy) if below else None
