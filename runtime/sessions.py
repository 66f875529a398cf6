"""One ONNX Runtime session configuration and one timing loop, for ``bench``, the predictor and
the exporter's latency numbers (``sttabt_edge.export.ort``), so they measure the same thing.

Threads are explicit and intra-op spinning is off by default: on a small shared CPU, spinning
threads of one session slow every other process (and other sessions) down, which makes latency
numbers meaningless. Torch-free like the rest of the runtime.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeAlias

Optimization: TypeAlias = Literal["disable", "basic", "extended", "all"]
OPTIMIZATIONS: tuple[Optimization, ...] = ("disable", "basic", "extended", "all")


def session_options(
    threads: int | None = None,
    optimization: Optimization = "all",
    spinning: bool = False,
    quiet: bool = False,
) -> Any:
    """``ort.SessionOptions``: ``threads`` intra-op threads and one inter-op (None: ORT's default),
    sequential execution, graph ``optimization`` level, ``spinning`` (when on, threads spin only
    inside a run: ``force_spinning_stop``), ``quiet``: errors only (ORT warns about unused
    initializers after slimming)."""
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = levels[optimization]
    # spinning threads make sessions and neighbours slow each other on small CPUs; when on, they
    # spin only inside a run (force_spinning_stop): between runs they sleep instead of stealing
    # the cores of whatever runs next (another model, the preprocessing, a benchmark's other worker)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if spinning:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    if quiet:
        opts.log_severity_level = 3
    return opts


def time_ms(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one call in ms, and its result."""
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


def interleaved_times_ms(
    fns: Mapping[str, Callable[[], Any]], runs: int = 20, warmup: int = 3
) -> dict[str, list[float]]:
    """Per-run wall times of several callables, timed round-robin (A B C A B C ...) after ``warmup``
    untimed rounds: load changes on a shared machine hit every callable of a round alike, which
    keeps per-round ratios stable where back-to-back medians drift."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            times[name].append(time_ms(fn)[0])
    return times
