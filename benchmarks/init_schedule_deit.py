"""Where concrete training starts: the held-out accuracy of each calibrated threshold schedule, before any step.

``train concrete`` calibrates its thresholds to the retention target on training images before the first
step (``SparseTrainConfig.init_schedule``): ``constant`` (every layer keeps ~target), ``union`` (each
layer's own selection keeps one fraction; the nested sets grow toward the input, the shape of top-k
back-tracking) or ``shared`` (one offset for every layer, the official init). Under the union rule a
``constant`` schedule can only be met by the top layer: every layer below inherits its set, so their
thresholds go to the top of the bisection span, where their gradients vanish. This script measures what
each start is worth on the 500 held-out images, with real removal, so the recipe's choice is a
measurement:

    python benchmarks/init_schedule_deit.py --approx runs/deit/approx --targets 0.5 0.4 \\
        --out benchmarks/results/init_schedule_deit.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import SHARED, environment, quiet_third_party, write_json
from rich.console import Console
from rich.table import Table

from sttabt_edge.evaluate import evaluate
from sttabt_edge.method.approxnet import ApproxNet
from sttabt_edge.models.loading import load_model
from sttabt_edge.sparse_model import SparseClassifier
from sttabt_edge.train.calibrate import (
    calibration_batches,
    shape_thresholds,
    snap_thresholds,
    union_thresholds,
)
from sttabt_edge.train.concrete import build_objective
from sttabt_edge.train.config import SparseTrainConfig, TrainConfig
from sttabt_edge.train.data import prepare_data

CALIBRATE = {"constant": shape_thresholds, "union": union_thresholds, "shared": snap_thresholds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=SHARED / "models" / "deit-tiny-imagenet")
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "imagenet-sample")
    ap.add_argument("--approx", type=Path, required=True, help="ApproxNet dir from `train approx`")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5])
    ap.add_argument("--schedules", nargs="+", choices=list(CALIBRATE), default=list(CALIBRATE))
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--max-eval", type=int, default=0, help="first N held-out images (0: all 500)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/init_schedule_deit.json"))
    args = ap.parse_args()
    t0 = time.time()
    model = load_model(str(args.model))
    data = prepare_data(args.data, model, args.model)
    held = data.eval_examples(args.max_eval)
    rows = []
    for target in args.targets:
        for schedule in args.schedules:
            approx = ApproxNet.load(args.approx, model.config)
            scfg = SparseTrainConfig(
                target_retention=target, init_schedule=schedule, calib_samples=args.calib_samples
            )
            calib = calibration_batches(data, scfg, TrainConfig(), torch.device("cpu"))
            reducer = build_objective(model, approx, scfg, calib).sparse.reducer
            with torch.no_grad():
                CALIBRATE[schedule](
                    reducer, SparseClassifier(model, reducer).parts, calib, target, noisy=False
                )
            reducer.eval()
            res = evaluate(
                SparseClassifier(model, reducer), held, image=data.image, batch_size=50, progress=False
            )
            rows.append(
                {
                    "target": target,
                    "schedule": schedule,
                    "accuracy": 100 * res.metrics["accuracy"],
                    "retention": res.retention,
                    "flops_ratio": res.flops_ratio,
                    "per_layer_retention": [float(v) for v in res.retention_per_layer],
                    "thresholds": [float(v) for v in reducer.thresholds.logits.detach()],
                }
            )
    table = Table(title=f"calibrated start, {len(held)} held-out images, no training")
    for col in ("target", "schedule", "top-1 %", "retention", "FLOPs ×", "per-layer retention"):
        table.add_column(col)
    for r in rows:
        per = " ".join(f"{v:.2f}" for v in r["per_layer_retention"])
        table.add_row(
            f"{r['target']:g}", r["schedule"], f"{r['accuracy']:.1f}", f"{r['retention']:.3f}",
            f"{r['flops_ratio']:.3f}", per,
        )  # fmt: skip
    Console().print(table)
    write_json(
        args.out,
        {
            "approx": str(args.approx),
            "held_out": len(held),
            "calib_samples": args.calib_samples,
            "rows": rows,
            "wall_s": time.time() - t0,
            **environment(),
        },
    )


if __name__ == "__main__":
    quiet_third_party()
    main()
