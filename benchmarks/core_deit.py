"""DeiT-Tiny on imagenet-sample: dense vs back-tracking (union and count nesting; the model's own
attention and an untrained ApproxNet) vs top-k vs ToMe, nothing fine-tuned.

For each target (default average retention 0.5 and 0.3; ``--match flops``: FLOPs ratios) every
method's knob is first calibrated on a few images so all are compared at the same retention or
cost; then top-1 over all images, the measured retention and occupancy, analytic FLOPs, and the
batch-1 PyTorch latency ratio vs dense, timed interleaved in this same run.

``sttabt`` is the official union rule (each layer keeps topk ∪ the next layer's set),
``sttabt-count`` the earlier counted-in rule, both with one keep ratio for every layer;
``-approx`` variants back-track an untrained ÷4 interpolated ApproxNet instead of the model.

Schedules: ``sttabt`` keeps the same fraction r at every layer; ``sttabt-geo``, ``topk`` and
``tome`` use a progressive (geometric) schedule, the fraction q**l of the tokens entering
layer l, as EViT and ToMe's decreasing schedule do (a constant ToMe r cannot go below
~0.55 average retention on 12 layers; a scalar top-k would prune everything after layer
0, where CLS attention is least informative). Each method's knob (r or q) is bisected.

The oracle back-tracks the model's own attention: it shows what STTABT's pruning does
with perfect attention prediction. Its latency is that of the sparse model alone (the
oracle's dense attention pass is an analysis device, not part of any deployable cost).

    python benchmarks/core_deit.py                 # matched retention, ~15 min on 2 cores
    python benchmarks/core_deit.py --match flops --targets 0.5 0.35
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import SHARED, calibrate, environment, interleaved_latency, quiet_third_party, write_json
from rich.console import Console
from rich.table import Table

from sttabt_edge.data import image_folder, model_class_names
from sttabt_edge.evaluate import evaluate
from sttabt_edge.method.sparse import KeepPlan, plan_forward
from sttabt_edge.models.loading import load_model
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.factory import make_reducer
from sttabt_edge.reducers.sttabt import SttabtReducer
from sttabt_edge.runtime import ImagePreprocess
from sttabt_edge.sparse_model import SparseClassifier


class FixedPlan(Reducer):
    """Replays a precomputed keep plan: times the sparse model without the plan's source."""

    name = "fixed-plan"

    def __init__(self, plan: KeepPlan):
        super().__init__()
        self.plan = plan

    def run(self, parts, inputs, x, pad_mask, mode="remove"):
        return plan_forward(parts, x, pad_mask, self.plan, mode)


def _geometric(q: float, num_layers: int, offset: int) -> list[float]:
    """Fraction q**(l+offset) per layer; reducers differ in whether entry l means layer l or l+1."""
    return [q ** (layer + offset) for layer in range(num_layers)]


# method -> knob -> reducer. sttabt's list entry l is layer l's input; topk/tome's entry l is
# what enters layer l+1, hence the offsets: all three keep q**l of the tokens entering layer l.
def _approx(model, path: Path | None) -> torch.nn.Module:
    """A distilled ApproxNet (``--approx DIR``), else the untrained interpolated ÷4 one."""
    from sttabt_edge.method.approxnet import ApproxNet, build_approxnet

    if path is not None:
        return ApproxNet.load(path, model.config).eval()
    return build_approxnet(model, 4, "interpolate").eval()


MAKERS = {
    "sttabt": lambda r, L, m: make_reducer("sttabt", keep_ratio=r),
    "sttabt-count": lambda r, L, m: make_reducer("sttabt", keep_ratio=r, nesting="count"),
    "sttabt-approx": lambda r, L, m: make_reducer("sttabt", approx=m, keep_ratio=r),
    "sttabt-approx-count": lambda r, L, m: make_reducer("sttabt", approx=m, keep_ratio=r, nesting="count"),
    "sttabt-geo": lambda q, L, m: make_reducer("sttabt", keep_ratio=_geometric(q, L, 0), nesting="count"),
    "topk": lambda q, L, m: make_reducer("topk", keep_ratio=_geometric(q, L, 1)),
    "tome": lambda q, L, m: make_reducer("tome", keep_ratio=_geometric(q, L, 1)),
}
DEFAULT_METHODS = ["sttabt", "sttabt-count", "sttabt-approx", "sttabt-approx-count", "topk", "tome"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=SHARED / "models" / "deit-tiny-imagenet")
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "imagenet-sample")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3])
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(MAKERS))
    ap.add_argument(
        "--match",
        choices=["retention", "flops"],
        default="retention",
        help="what the targets are: mean retention, or FLOPs / dense (ApproxNet included)",
    )
    ap.add_argument(
        "--approx", type=Path, default=None, help="a distilled ApproxNet dir (default: untrained /4)"
    )
    ap.add_argument(
        "--held-out",
        action="store_true",
        help="evaluate on the held-out half (train/sources.split_half) and calibrate on the training half, "
        "as for an ApproxNet distilled on that half",
    )
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30, help="latency rounds (0: accuracy only)")
    ap.add_argument(
        "--out", type=Path, default=None, help="default benchmarks/results/core_deit[_flops].json"
    )
    ap.add_argument("--replot", type=Path, default=None, help="only redraw the figure of this results JSON")
    args = ap.parse_args()
    if args.runs < 0:
        ap.error(f"--runs must be >= 0, got {args.runs}")
    if args.replot is not None:
        replot(args.replot)
        return
    suffix = "" if args.match == "retention" else "_flops"
    args.out = args.out or Path(f"benchmarks/results/core_deit{suffix}.json")

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    console = Console()
    model = load_model(args.model)
    approx = _approx(model, args.approx)
    num_layers = model.config.num_hidden_layers
    pre = ImagePreprocess()
    examples = image_folder(args.data, model_class_names(args.model))
    calib_pool = examples
    if args.held_out:
        from sttabt_edge.train.sources import split_half

        calib_pool, examples = split_half(examples, 0)
    examples = examples[: args.max_images]
    calib = {"pixel_values": torch.from_numpy(pre([e.inputs for e in calib_pool[-args.calib_images :]]))}
    one = {"pixel_values": calib["pixel_values"][:1]}

    t_start = time.time()
    results, knobs = [], {}
    configs = [("dense", None)] + [(m, t) for t in args.targets for m in args.methods]
    for method, target in configs:
        if method == "dense":
            reducer, knob = make_reducer("dense"), None
        else:
            lo = 0.5 if method == "tome" else 0.02  # one ToMe round merges at most half the tokens
            knob = calibrate(
                model,
                lambda r, m=method: MAKERS[m](r, num_layers, approx),
                calib,
                target,
                lo=lo,
                measure=args.match,
            )
            reducer = MAKERS[method](knob, num_layers, approx)
        label = method if target is None else f"{method}@{target:g}"
        res = evaluate(
            SparseClassifier(model, reducer), examples, image=pre, batch_size=args.batch_size, name=label
        )
        res.extra["knob"] = float("nan") if knob is None else knob
        results.append(res)
        knobs[label] = reducer
        console.print(
            f"{label:24s} top-1 {res.metrics['accuracy']:.3f} retention {res.retention:.3f} "
            f"occupancy {res.occupancy:.3f} FLOPs x{res.flops_ratio:.3f} (knob {res.extra['knob']:.4f})"
        )

    # batch-1 latency, all configs interleaved in one loop; dense (HF's own forward) is the reference
    fns = {"dense": lambda: model(**one)}
    for label, reducer in knobs.items():
        if label == "dense":
            continue
        if isinstance(reducer, SttabtReducer) and reducer.approx is None:  # the oracle: time the sparse model
            parts = SparseClassifier(model, reducer).parts
            reducer = FixedPlan(reducer.keep_plan(parts, reducer.backtrack(parts, one, *_embed(model, one))))
        sc = SparseClassifier(model, reducer).eval()
        fns[label] = lambda sc=sc: sc(**one)
    if args.runs > 0:  # --runs 0: accuracy only (a busy machine's timings would mislead)
        with torch.inference_mode():
            lat = interleaved_latency(fns, runs=args.runs)
        for r in results:
            key = "dense" if r.method == "dense" else r.method
            r.extra.update({f"latency_{k}": v for k, v in lat[key].items()})

    table = Table(title=f"DeiT-Tiny, {len(examples)} images, batch-1 latency on {args.threads} threads")
    for col in (
        "method",
        "top-1",
        "retention",
        "occupancy",
        "GFLOPs",
        "FLOPs ratio",
        "latency ms",
        "latency ratio",
    ):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            r.method,
            f"{100 * r.metrics['accuracy']:.1f}",
            f"{r.retention:.3f}",
            f"{r.occupancy:.3f}",
            f"{r.gflops:.3f}",
            f"{r.flops_ratio:.3f}",
            f"{r.extra['latency_median_ms']:.1f}" if "latency_median_ms" in r.extra else "-",
            f"{r.extra['latency_ratio_vs_ref']:.3f}" if "latency_ratio_vs_ref" in r.extra else "-",
        )
    console.print(table)
    payload = {
        "benchmark": "core_deit",
        "match": args.match,
        "targets": args.targets,
        "model": str(args.model),
        "images": len(examples),
        "held_out": args.held_out,
        "approx": str(args.approx) if args.approx else "untrained /4 interpolate",
        "wall_s": time.time() - t_start,
        "env": environment(),
        "results": [r.to_dict() for r in results],
    }
    write_json(args.out, payload)
    _plot(results, args.out.with_suffix(".png"))
    console.print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def _embed(model, inputs):
    from sttabt_edge.compat import model_parts
    from sttabt_edge.models.adapter import embed

    return embed(model_parts(model), inputs)


LABELS = {
    "sttabt": "STTABT union (own attention)",
    "sttabt-count": "STTABT count (own attention)",
    "sttabt-approx": "STTABT union (ApproxNet: --approx, else untrained ÷4)",
    "sttabt-approx-count": "STTABT count (ApproxNet: --approx, else untrained ÷4)",
    "sttabt-geo": "STTABT count, geometric (own attention)",
    "topk": "EViT top-k",
    "tome": "ToMe",
}


def replot(json_path: Path) -> None:
    """Redraw a results file's figure (e.g. after a label change) without rerunning it."""
    import json
    from types import SimpleNamespace

    results = [SimpleNamespace(**r) for r in json.loads(json_path.read_text())["results"]]
    _plot(results, json_path.with_suffix(".png"))


def _plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, xlabel in (
        (axes[0], "flops_ratio", "FLOPs / dense"),
        (axes[1], "latency", "batch-1 latency / dense (PyTorch CPU, this run's machine load)"),
    ):
        by_method: dict[str, list] = {}
        for r in results:
            base = r.method.split("@")[0]
            x = r.flops_ratio if key == "flops_ratio" else r.extra.get("latency_ratio_vs_ref")
            if x is None:  # --runs 0: no latency panel points
                continue
            by_method.setdefault(base, []).append((x, 100 * r.metrics["accuracy"], r.retention))
        for base, pts in by_method.items():
            pts.sort()
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                "o-" if len(pts) > 1 else "*",
                ms=8,
                label=LABELS.get(base, base),
            )
            for x, y, ret in pts:
                ax.annotate(f"r={ret:.2f}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("DeiT-Tiny on imagenet-sample: accuracy vs cost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    quiet_third_party()
    main()
