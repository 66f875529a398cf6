"""``compress``: dense model + training data -> a verified, benchmarked STTABT file and a report.

1. split: a held-out part of the *training* data selects (never the evaluation set);
2. distil the ApproxNet (or reuse ``--approx``) for the budget's share of time;
3. search the keep ratio of training-free back-tracking on the held-out split: with
   ``--max-drop``, the lowest ratio within the drop; with ``--target-retention``, the ratio
   calibrated to it;
4. train thresholds (concrete masking, the model fine-tuned) where the budget allows: at the
   retention where training-free back-tracking just missed the drop (``--max-drop``) or at
   the target; kept only if it is better on the held-out split;
5. export the chosen point and the dense baseline (fp32, and INT8 with ``--quantize``), verify
   the export against PyTorch, measure runtime accuracy (held-out, and the evaluation set as a
   report only) and latency against the dense export (block alternation);
6. report.json (with the commit), report.md, report.png.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from sttabt_edge.compress import stages
from sttabt_edge.compress.config import CompressConfig
from sttabt_edge.compress.search import (
    Point,
    best_point,
    first_failure,
    search_keep_ratio,
    within,
)
from sttabt_edge.errors import InputError

DISTIL_SHARE = 0.5  # of the budget, when thresholds are trained too (else all of it)
REPORT_FILE = "report.json"


class Phases:
    """Numbered rich rules per phase and their wall times."""

    def __init__(self, console: Console, total: int):
        self.console, self.total = console, total
        self.times: dict[str, float] = {}
        self.t0 = time.perf_counter()

    @contextmanager
    def __call__(self, name: str, what: str) -> Iterator[None]:
        self.console.rule(f"[bold cyan]{len(self.times) + 1}/{self.total} {what}")
        t0 = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - t0, 1)
        self.console.print(
            f"[green]done[/] {name}: {self.times[name]:.0f} s (total {time.perf_counter() - self.t0:.0f} s)"
        )

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def check_out(cfg: CompressConfig, resume: bool) -> None:
    """A finished or foreign output dir is never overwritten silently."""
    if cfg.out.exists() and any(cfg.out.iterdir()) and not resume:
        raise InputError(
            f"--out {cfg.out} is not empty; pass --resume to continue that run, or another --out"
        )


def run_compress(cfg: CompressConfig, console: Console | None = None, resume: bool = False) -> dict[str, Any]:
    from sttabt_edge.provenance import git_commit

    console = console or Console(stderr=True)
    check_out(cfg, resume)
    from sttabt_edge.models.loading import load_model
    from sttabt_edge.train.data import prepare_data

    cfg.out.mkdir(parents=True, exist_ok=True)
    ph = Phases(console, 6)
    report: dict[str, Any] = {"config": cfg.to_dict(), "commit": git_commit()}
    with ph("split", "load the model and split the training data"):
        net = load_model(cfg.model).eval()
        model_dir = Path(cfg.model) if Path(cfg.model).is_dir() else None
        data = prepare_data(cfg.data, net, model_dir, cfg.selection.eval_data, labeled=True, seed=cfg.seed)
        split = stages.split_data(cfg, data)
        dense = stages.measure_dense(net, split, cfg)
        report["data"] = {
            "fit": len(split.data.train),
            "held_out": len(split.held),
            "report": len(split.report),
            "dropped_contained": split.dropped_contained,
            "held_out_mean_tokens": split.mean_length,
            "occupancy_length": split.occupancy_length,
            "task": data.task,
        }
        console.print(
            f"held-out {len(split.held)} of the training data, dense accuracy {dense.accuracy:.2f}%"
        )
    # the budget is training time: distillation, then threshold training gets what distillation left
    with ph("distil", "ApproxNet"):
        approx, report["approx"] = _approx(
            cfg, net, split, cfg.budget.seconds * (DISTIL_SHARE if cfg.budget.concrete else 1.0), resume
        )
    with ph("search", "keep-ratio search on the held-out split (training-free back-tracking)"):
        probes = _search(cfg, net, approx, split, dense)
        report["search"] = [p.to_dict() for p in probes]
    with ph("thresholds", "threshold training (concrete masking)"):
        trained = _thresholds(
            cfg,
            net,
            approx,
            split,
            dense,
            probes,
            cfg.budget.seconds - ph.times["distil"],
            resume,
            model_dir,
            report,
        )
    chosen = _choose(cfg, dense, probes, trained)
    report["dense"], report["chosen"] = dense.to_dict(), chosen.to_dict()
    report["within_budget"] = cfg.goal.max_drop is None or within(chosen, dense.accuracy, cfg.goal.max_drop)
    console.print(
        f"chosen: {chosen.kind} at retention {chosen.retention:.3f}, held-out {chosen.accuracy:.2f}% "
        f"(dense {dense.accuracy:.2f}%)"
    )
    with ph("export", "export, verify, runtime accuracy"):
        from sttabt_edge.compress.deliver import deliver

        report["files"] = deliver(cfg, net, approx, chosen, split, report)
    with ph("bench", "latency against the dense export"):
        from sttabt_edge.compress.deliver import benchmark

        report["latency"] = benchmark(cfg, split, report["files"])
    report["wall_s"] = {**ph.times, "total": round(ph.elapsed(), 1)}
    from sttabt_edge.compress.report import write_report

    write_report(cfg.out, report)
    return report


def _approx(
    cfg: CompressConfig, net: Any, split: stages.Split, seconds: float, resume: bool
) -> tuple[Any, dict]:
    from sttabt_edge.method.approxnet import ApproxNet
    from sttabt_edge.train.approx import REPORT_FILE as APPROX_REPORT

    if cfg.approxnet.path is not None:
        return ApproxNet.load(cfg.approxnet.path, net.config).eval(), {
            "dir": str(cfg.approxnet.path),
            "trained_here": False,
        }
    out = cfg.out / "approx"
    if (out / APPROX_REPORT).is_file() and resume:  # finished in an earlier run
        return ApproxNet.load(out, net.config).eval(), {
            "dir": str(out),
            "trained_here": True,
            "reused": True,
            **json.loads((out / APPROX_REPORT).read_text()),
        }
    tcfg, alloc = stages.plan_distillation(net, split, cfg, seconds)
    if alloc.steps == 0:
        raise InputError(
            f"--budget-minutes {cfg.budget.minutes:g} leaves {seconds:.0f} s for distillation, fewer "
            f"than {stages.MIN_APPROX_STEPS} steps of {alloc.step_seconds or 0:.2f} s; raise it or pass --approx"
        )
    approx = stages.distil(net, split, cfg, tcfg, out, resume)
    info = json.loads((out / APPROX_REPORT).read_text()) if (out / APPROX_REPORT).is_file() else {}
    return approx.eval(), {
        "dir": str(out),
        "trained_here": True,
        "steps": tcfg.optim.steps,
        "planned_seconds": round(seconds),
        "step_seconds": _round(alloc.step_seconds),
        **info,
    }


def _search(cfg: CompressConfig, net: Any, approx: Any, split: stages.Split, dense: Point) -> list[Point]:
    def at(r: float) -> Point:
        return stages.measure(net, stages.topk_reducer(approx, r), split, cfg, "topk", keep_ratio=round(r, 4))

    if cfg.goal.max_drop is not None:
        return search_keep_ratio(at, dense.accuracy, cfg.goal.max_drop, steps=cfg.selection.search_steps)
    batch = stages.calibration_batch(split, cfg)
    assert cfg.goal.target_retention is not None
    from sttabt_edge.sparse_model import mean_retention
    from sttabt_edge.train.sweep import bisect_knob

    r, _ = bisect_knob(
        lambda k: mean_retention(net, stages.topk_reducer(approx, k), batch),
        cfg.goal.target_retention,
        0.01,
        1.0,
        iters=12,
    )
    return [at(r)]


def _thresholds(
    cfg: CompressConfig,
    net: Any,
    approx: Any,
    split: stages.Split,
    dense: Point,
    probes: list[Point],
    seconds: float,
    resume: bool,
    model_dir: Path | None,
    report: dict[str, Any],
) -> Point | None:
    """Train thresholds at one retention where they can pay off; None when skipped (reason in the report)."""
    from sttabt_edge.train.artifacts import TRAINED_FILE, load_sttabt

    if not cfg.budget.concrete:
        report["thresholds"] = {"skipped": "--no-concrete"}
        return None
    if cfg.goal.max_drop is not None:
        best = best_point(probes, dense.accuracy, cfg.goal.max_drop)
        miss = first_failure(probes, dense.accuracy, cfg.goal.max_drop, best)
        target = miss.retention if miss is not None else (best.retention * 0.8 if best else 0.5)
    else:
        assert cfg.goal.target_retention is not None
        target = cfg.goal.target_retention
    out = cfg.out / "sttabt"
    if not (resume and (out / TRAINED_FILE).is_file()):
        tcfg, alloc = stages.plan_concrete(net, approx, split, cfg, seconds)
        report["thresholds"] = {
            "target_retention": round(target, 4),
            "planned_seconds": round(max(seconds, 0)),
            "step_seconds": _round(alloc.step_seconds),
            "steps": alloc.steps,
        }
        if alloc.steps == 0:
            report["thresholds"]["skipped"] = (
                f"{max(seconds, 0):.0f} s left: fewer than {stages.MIN_CONCRETE_STEPS} steps"
            )
            return None
        stages.train_thresholds(net, approx, split, tcfg, target, out, model_dir, resume)
    sc = load_sttabt(out)
    point = stages.measure(sc.model, sc.reducer, split, cfg, "concrete", target_retention=round(target, 4))
    report.setdefault("thresholds", {})["point"] = point.to_dict()
    return point


def _choose(cfg: CompressConfig, dense: Point, probes: list[Point], trained: Point | None) -> Point:
    points = probes + ([trained] if trained is not None else [])
    if cfg.goal.max_drop is not None:
        best = best_point(points, dense.accuracy, cfg.goal.max_drop)
        if best is None:  # nothing within the drop: the mildest probe, reported as such
            return max(points, key=lambda p: (p.accuracy, p.retention))
        return best
    return max(points, key=lambda p: p.accuracy)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
