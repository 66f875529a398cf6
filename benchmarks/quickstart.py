"""Quickstart: DeiT-Tiny dense vs STTABT back-tracking on imagenet-sample, offline.

Prints top-1, retention and analytic FLOPs of the dense model and of STTABT with the
model's own attention as the back-tracking source (oracle) at two keep ratios.

    make demo                          # or: python benchmarks/quickstart.py --images 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from sttabt_edge.data import image_folder, image_preprocess_for, model_class_names
from sttabt_edge.evaluate import evaluate
from sttabt_edge.models.loading import load_model
from sttabt_edge.reducers import DenseReducer, SttabtReducer

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=SHARED / "models" / "deit-tiny-imagenet")
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "imagenet-sample")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--keep-ratios", type=float, nargs="+", default=[0.5, 0.3])
    args = ap.parse_args()
    torch.set_num_threads(2)

    model = load_model(args.model)
    examples = image_folder(args.data, model_class_names(args.model))[: args.images]
    pre = image_preprocess_for(model)
    runs = [("dense", DenseReducer())] + [(f"sttabt oracle r={r:g}", SttabtReducer(keep_ratio=r))
                                         for r in args.keep_ratios]
    table = Table(title=f"DeiT-Tiny on {len(examples)} imagenet-sample images")
    for col in ("method", "top-1 %", "retention", "GFLOPs", "FLOPs / dense"):
        table.add_column(col, justify="right")
    for name, reducer in runs:
        r = evaluate(model, reducer, examples, image=pre, batch_size=50, name=name)
        table.add_row(name, f"{100 * r.metrics['accuracy']:.1f}", f"{r.retention:.3f}", f"{r.gflops:.3f}",
                      f"{r.flops_ratio:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
