"""Accuracy-vs-retention sweeps: distil an ApproxNet once, then train and evaluate every method at
every retention target on the same held-out data. What the train_* benchmarks run.

Trained methods (``concrete``, ``ltp``, ``topk``) each start from a fresh copy of the dense
model. Training-free references (``tome``, and ``sttabt-topk``: back-tracking the trained
ApproxNet with one keep ratio for every layer) get their knob bisected on the calibration
inputs (training inputs, or unlabeled held-out ones with ``calib_on_eval``) so that every
method is compared at the same mean retention.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sttabt_edge.bisection import bisect_to
from sttabt_edge.data import Example, longest_length, model_class_names
from sttabt_edge.evaluate import evaluate
from sttabt_edge.method.approxnet import ApproxNet
from sttabt_edge.models.loading import load_model
from sttabt_edge.reducers import DenseReducer, SttabtReducer
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.factory import build, takes_approx
from sttabt_edge.reducers.spec import Ratio, ReducerOptions, spec_from_options
from sttabt_edge.sparse_model import SparseClassifier, mean_retention
from sttabt_edge.train.approx import REPORT_FILE, train_approx
from sttabt_edge.train.baselines import merge_batches, train_baseline
from sttabt_edge.train.concrete import train_concrete
from sttabt_edge.train.config import ApproxConfig, SparseTrainConfig, TrainConfig
from sttabt_edge.train.data import TrainData, prepare_data
from sttabt_edge.train.engine import METRICS_FILE
from sttabt_edge.train.hf import hf_config
from sttabt_edge.train.losses import REACH_TOL, UnreachableTargetError

TRAINED = ("concrete", "ltp", "topk")
TRAINING_FREE = ("tome", "sttabt-topk")
# each training-free method's reducer kind and its knob q as keep ratios (see training_free)
KNOBS: dict[str, tuple[str, Callable[[float, int], Ratio]]] = {
    "tome": ("tome", lambda q, n: tuple(q ** (layer + 1) for layer in range(n))),  # geometric
    "sttabt-topk": ("sttabt", lambda q, n: q),  # one ratio for every layer
}


@dataclass
class SweepPlan:
    targets: list[float]
    methods: list[str] = field(default_factory=lambda: [*TRAINED, *TRAINING_FREE])
    approx_cfg: TrainConfig = field(default_factory=TrainConfig)
    sparse_cfg: TrainConfig = field(default_factory=TrainConfig)
    acfg: ApproxConfig = field(default_factory=ApproxConfig)
    scfg: SparseTrainConfig = field(default_factory=SparseTrainConfig)
    max_eval: int = 0  # 0 = the whole held-out set
    calib_on_eval: bool = False  # calibrate thresholds / knobs on unlabeled held-out inputs instead of train
    eval_batch_size: int = 64
    approx_dir: Path | None = (
        None  # reuse this distilled ApproxNet (train_approx output) instead of distilling
    )


def cli_commands(model_dir: Path, data: Path, work: Path, plan: SweepPlan) -> list[str]:
    """The ``sttabt-edge train`` commands equivalent to this sweep (for the README / logs)."""
    a, s = plan.approx_cfg, plan.sparse_cfg
    common = f"--model {model_dir} --data {data}"
    approx_dir = plan.approx_dir or f"{work}/approx"
    out = (
        []
        if plan.approx_dir is not None
        else [
            f"sttabt-edge train approx {common} --factor {plan.acfg.factor} --init {plan.acfg.init} "
            f"--out {approx_dir} --steps {a.optim.steps} --batch-size {a.optim.batch_size} --lr {a.optim.lr:g}"
        ]
    )
    sparse = f"--steps {s.optim.steps} --batch-size {s.optim.batch_size} --lr {s.optim.lr:g}"
    if plan.calib_on_eval:
        sparse += " --calib-on eval"
    schedule = "" if plan.scfg.init_schedule == "constant" else f" --init-schedule {plan.scfg.init_schedule}"
    if plan.scfg.sttabt.concrete != "ste":
        schedule += f" --concrete {plan.scfg.sttabt.concrete}"
    for r in plan.targets:
        if "concrete" in plan.methods:
            out.append(
                f"sttabt-edge train concrete {common} --approx {approx_dir} --target-retention {r:g} "
                f"--out {work}/concrete-{r:g} {sparse}{schedule}"
            )
        out += [
            f"sttabt-edge train baseline --method {m} {common} --target-retention {r:g} "
            f"--out {work}/{m}-{r:g} {sparse}"
            for m in ("ltp", "topk")
            if m in plan.methods
        ]
    return out


def bisect_knob(
    measure: Callable[[float], float], target: float, lo: float, hi: float, iters: int = 14
) -> tuple[float, float]:
    """(knob, measure(knob)): the knob in [lo, hi] whose ``measure`` (increasing in the knob) is
    closest to ``target``. Both ends are probed, so an unreachable target ends at the closer end;
    of equally close probes, the first (hi, lo, then the bisection's midpoints)."""
    probes: list[tuple[float, float]] = []

    def probe(k: float) -> float:
        probes.append((k, measure(k)))
        return probes[-1][1]

    probe(hi)
    probe(lo)
    bisect_to(probe, target, lo, hi, iters)
    return min(probes, key=lambda p: abs(p[1] - target))


def training_free(
    method: str,
    model: torch.nn.Module,
    approx: ApproxNet | None,
    target: float,
    inputs: dict[str, torch.Tensor],
) -> tuple[Reducer, float]:
    """ToMe, or top-k back-tracking of the ApproxNet, with its knob bisected to ``target``.

    ToMe's knob is q in a geometric schedule q**(l+1) (merges compound layer by layer).
    Back-tracking's is one keep ratio for every layer: what ``sttabt-edge export --keep-ratio``
    ships, and far better than a geometric schedule at low retention (a geometric schedule
    leaves the last layers nearly empty; on SST-2 dev at ~0.17 retention it scored 50.9% against
    72.9% for one ratio). Returns the reducer and its mean retention on ``inputs``, which is off
    the target when the target is unreachable (ToMe merges at most about half the tokens per
    layer: its floor is every layer merging the most it can; on short inputs that is a large
    fraction).
    """
    num_layers = int(hf_config(model).num_hidden_layers)

    kind, knob = KNOBS[method]

    def make(q: float) -> Reducer:
        spec = spec_from_options(kind, ReducerOptions(keep_ratio=knob(q, num_layers)))
        return build(spec, approx if takes_approx(spec) else None)

    q, reached = bisect_knob(lambda k: mean_retention(model, make(k), inputs), target, 0.02, 1.0)
    return make(q), reached


def _eval(
    model: torch.nn.Module, reducer: Reducer, data: TrainData, plan: SweepPlan, name: str, max_length: int
) -> dict[str, Any]:
    examples = data.eval_examples(plan.max_eval)
    pad_to = None if data.text is None else longest_length(examples, data.text, max_length)
    res = evaluate(
        SparseClassifier(model, reducer),
        examples,
        image=data.image,
        text=data.text,
        batch_size=plan.eval_batch_size,
        task=data.task,
        name=name,
        max_length=max_length,
        occupancy_length=pad_to,
    )
    return {
        "metrics": res.metrics,
        "retention": res.retention,
        "retention_per_layer": res.retention_per_layer,
        "occupancy": res.occupancy,
        "occupancy_length": res.occupancy_length,
        "flops_ratio": res.flops_ratio,
        "gflops": res.gflops,
        "num_samples": res.num_samples,
    }


def _step_time(run_dir: Path) -> float | None:
    lines = [json.loads(ln) for ln in (run_dir / METRICS_FILE).read_text().splitlines() if ln.strip()]
    times = [ln["step_time"] for ln in lines if "step_time" in ln]
    return times[-1] if times else None


def run_sweep(
    model_dir: Path,
    data_path: Path,
    work: Path,
    plan: SweepPlan,
    log: Callable[[str], None] = print,
    save: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the whole sweep; ``save(results)`` is called after every point (partial results survive)."""
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    dense = load_model(model_dir)
    data = prepare_data(data_path, dense, model_dir, class_names=model_class_names(model_dir))
    max_length = plan.sparse_cfg.data.max_length
    results: dict[str, Any] = {
        "points": [],
        "commands": cli_commands(model_dir, data_path, work, plan),
        "num_train": len(data.train),
        "num_eval": len(data.eval_examples(plan.max_eval)),
    }
    log(f"{len(data.train)} training examples, {results['num_eval']} held-out")
    results["dense"] = _eval(dense, DenseReducer(), data, plan, "dense", max_length)
    log(f"dense: {results['dense']['metrics']}")

    t0 = time.perf_counter()
    approx_dir = work / "approx"
    if plan.approx_dir is not None:
        approx_dir = Path(plan.approx_dir)
        approx = ApproxNet.load(approx_dir, dense.config)
    else:
        unlabeled = dataclasses.replace(data, train=[Example(e.inputs, None) for e in data.train])  # type: ignore[arg-type]
        approx = train_approx(dense, unlabeled, cfg=plan.approx_cfg, out=approx_dir, acfg=plan.acfg)
    report = json.loads((approx_dir / REPORT_FILE).read_text())
    results["approx"] = {**report, "seconds": time.perf_counter() - t0, "dir": str(approx_dir)}
    log(
        f"ApproxNet /{plan.acfg.factor}: held-out attention KL {report['heldout_attention_kl_before']:.4f}"
        f" -> {report['heldout_attention_kl']:.4f} ({report['step_time_s']:.2f} s/step)"
    )

    # each point is evaluated below, not inside fit; calibration inputs: train, or unlabeled held-out
    train_only = dataclasses.replace(data, eval=None, calib=data.eval if plan.calib_on_eval else None)
    calib_np = train_only.calibration_batches(plan.scfg.calib_samples, 0, max_length)
    calib = merge_batches([{k: torch.from_numpy(v) for k, v in b.items()} for b in calib_np])
    results["calibrated_on"] = "held-out inputs (no labels)" if plan.calib_on_eval else "training inputs"
    if "attention_mask" in calib:
        results["calib_mean_length"] = float(calib["attention_mask"].sum(1).float().mean())
    results["unreachable"] = []
    for target in plan.targets:
        for method in plan.methods:
            t0 = time.perf_counter()
            point: dict[str, Any] = {"method": method, "target": target}
            if method in TRAINING_FREE:
                model: torch.nn.Module = load_model(model_dir)
                source = approx if method == "sttabt-topk" else None
                reducer, reached = training_free(method, model, source, target, calib)
                point.update(calib_retention=reached, target_reachable=abs(reached - target) <= REACH_TOL)
                if isinstance(reducer, SttabtReducer):  # sttabt-topk
                    point["keep_ratio"] = reducer.keep_ratio
                if not point["target_reachable"]:
                    log(
                        f"{method:12s} target {target:.2f}: unreachable on the calibration inputs, "
                        f"closest retention {reached:.3f}; evaluated there"
                    )
            else:
                run_dir = work / f"{method}-{target:g}"
                try:
                    model, reducer = _train_point(
                        method, target, model_dir, run_dir, train_only, plan, approx_dir
                    )
                except UnreachableTargetError as e:
                    results["unreachable"].append({"method": method, "target": target, "reason": str(e)})
                    log(f"{method:12s} target {target:.2f}: skipped, {e}")
                    continue
                point.update(train_steps=plan.sparse_cfg.optim.steps, step_time_s=_step_time(run_dir))
            point["train_seconds"] = time.perf_counter() - t0
            point.update(_eval(model, reducer, data, plan, f"{method} r={target:g}", max_length))
            results["points"].append(point)
            log(
                f"{method:12s} target {target:.2f}: retention {point['retention']:.3f} {point['metrics']} "
                f"FLOPs x{point['flops_ratio']:.3f} ({point['train_seconds']:.0f} s)"
            )
            results["wall_time_s"] = time.perf_counter() - t_start
            if save is not None:
                save(results)
    results["wall_time_s"] = time.perf_counter() - t_start
    return results


def _train_point(
    method: str,
    target: float,
    model_dir: Path,
    run_dir: Path,
    data: TrainData,
    plan: SweepPlan,
    approx_dir: Path,
) -> tuple[torch.nn.Module, Reducer]:
    """Train one method at one target from a fresh copy of the dense model."""
    model = load_model(model_dir)
    if method == "concrete":
        approx = ApproxNet.load(approx_dir, model.config)
        return train_concrete(
            model, approx, data, target, plan.sparse_cfg, scfg=plan.scfg, out=run_dir, source_dir=model_dir
        )
    return train_baseline(
        method, model, data, target, plan.sparse_cfg, plan.scfg, out=run_dir, source_dir=model_dir
    )


def plot_curves(results: dict[str, Any], path: Path, title: str, metric: str = "accuracy") -> None:
    """Metric vs mean retention and vs FLOPs ratio, one line per method, dense as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    methods = sorted({p["method"] for p in results["points"]}, key=lambda m: (m != "concrete", m))
    for ax, key, label in zip(
        axes, ("retention", "flops_ratio"), ("mean retention", "FLOPs / dense"), strict=True
    ):
        for m in methods:
            pts = sorted((p[key], 100 * p["metrics"][metric]) for p in results["points"] if p["method"] == m)
            ax.plot(*zip(*pts, strict=True), marker="o", label=m)
        ax.axhline(100 * results["dense"]["metrics"][metric], color="gray", linestyle="--", label="dense")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_rows(results: dict[str, Any], metric: str = "accuracy") -> list[Sequence[str]]:
    dense = f"{100 * results['dense']['metrics'][metric]:.2f}"
    rows: list[Sequence[str]] = [("dense", "1.000", dense, "1.000", "")]
    for p in results["points"]:
        rows.append(
            (
                f"{p['method']} @{p['target']:g}",
                f"{p['retention']:.3f}",
                f"{100 * p['metrics'][metric]:.2f}",
                f"{p['flops_ratio']:.3f}",
                f"{p.get('step_time_s') or 0:.2f}",
            )
        )
    return rows
