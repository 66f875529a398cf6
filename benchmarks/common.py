"""Shared benchmark helpers: retention calibration and interleaved latency measurement."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import statistics
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from sttabt_edge.atomic import atomic_write_text
from sttabt_edge.bisection import bisect
from sttabt_edge.cli_common import NOISY_LOGGERS, NOISY_MODULES
from sttabt_edge.provenance import git_commit
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.runtime.sessions import interleaved_times_ms
from sttabt_edge.sparse_model import SparseClassifier, mean_retention


def quiet_third_party() -> None:
    """A benchmark prints its tables, not the notices torchao, torch and transformers print on import
    or load (the CLI's rule, ``cli_common.quiet_third_party``). Each script calls it first under
    ``__main__``: a script owns its process, so nothing is restored; importing this module (as the
    tests do) changes nothing. ``STTABT_VERBOSE=1`` keeps the notices."""
    if os.environ.get("STTABT_VERBOSE") == "1":
        return
    for k, v in {
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TQDM_DISABLE": "1",
    }.items():
        os.environ.setdefault(k, v)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=NOISY_MODULES)


SHARED = Path(__file__).resolve().parents[2] / "shared"


def calibrate(
    model: torch.nn.Module,
    make: Callable[[float], Reducer],
    inputs: Mapping[str, torch.Tensor],
    target: float,
    lo: float = 0.02,
    hi: float = 1.0,
    steps: int = 12,
    measure: str = "retention",
) -> float:
    """Bisect a method's knob so its mean retention (or FLOPs ratio, ``measure="flops"``, the
    method's own cost such as the ApproxNet included) on ``inputs`` is closest to ``target``.

    Every method's knob (keep ratio, ToMe schedule ...) is monotone in both, so methods are
    compared at the same average retention or cost instead of the same nominal knob.
    """
    fn = {"retention": mean_retention, "flops": mean_flops_ratio}[measure]
    gaps: list[tuple[float, float]] = []  # (knob, |measure - target|) of each midpoint probed

    def below(k: float) -> bool:
        r = fn(model, make(k), inputs)
        gaps.append((k, abs(r - target)))
        return not r > target

    bisect(below, lo, hi, steps)
    return min((g for g in gaps if g[1] < math.inf), key=lambda g: g[1], default=(hi, 0.0))[0]


@torch.no_grad()
def mean_flops_ratio(model: torch.nn.Module, reducer: Reducer, inputs: Mapping[str, torch.Tensor]) -> float:
    """Mean analytic FLOPs of ``model`` under ``reducer`` over the dense model's, on ``inputs``."""
    from sttabt_edge.method.flops import dense_flops, output_flops

    sc = SparseClassifier(model, reducer).eval()
    out = sc(**inputs)
    flops = output_flops(sc.parts, out, reducer, inputs)
    return float(flops.double().mean() / dense_flops(sc.parts, out.pad_mask.sum(1)).double().mean())


def interleaved_latency(
    fns: Mapping[str, Callable[[], object]], runs: int = 30, warmup: int = 5
) -> dict[str, dict[str, float]]:
    """Time several callables round-robin (A B C A B C ...) so machine drift hits all alike.

    Returns per name: median and p90 latency in ms, and the median of per-round ratios to
    the first callable (the reference).
    """
    names = list(fns)
    times = interleaved_times_ms(fns, runs, warmup)  # the runtime's timing loop, as bench and export use
    ref = times[names[0]]
    out = {}
    for n in names:
        ts = sorted(times[n])
        ratios = [a / b for a, b in zip(times[n], ref, strict=True)]
        out[n] = {
            "median_ms": statistics.median(ts),
            "p90_ms": ts[int(0.9 * (len(ts) - 1))],
            "ratio_vs_ref": statistics.median(ratios),
        }
    return out


def environment() -> dict[str, str | int]:
    return {
        "commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }


def write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2))
