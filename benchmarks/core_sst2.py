"""MiniLM-SST2 on SST-2 dev: back-tracking with the union rule vs the counted-in rule, nothing fine-tuned.

Each method's keep ratio (one for every layer) is bisected so its mean retention on unlabeled
dev inputs is the target (default 0.5, 0.4, 0.3), then accuracy over all 872 dev sentences,
retention, the paper's occupancy (over the longest dev sentence, as the official evaluation
pads), and analytic FLOPs (the ApproxNet's cost included). Attention sources: the model's own
(``oracle``: what perfect prediction would give) and, with ``--approx DIR``, a distilled ApproxNet.

    python benchmarks/core_sst2.py --approx /work/runs/approx-sst2/approx_f4_h12   # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import SHARED, calibrate, environment, quiet_third_party, write_json
from rich.console import Console
from rich.table import Table

from sttabt_edge.data import batches, glue_tsv, longest_length
from sttabt_edge.evaluate import evaluate
from sttabt_edge.method.approxnet import ApproxNet
from sttabt_edge.models.loading import load_model
from sttabt_edge.reducers import DenseReducer, SttabtReducer
from sttabt_edge.runtime import TextPreprocess
from sttabt_edge.sparse_model import SparseClassifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=SHARED / "models" / "minilm-l6-sst2")
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "glue" / "SST-2" / "dev.tsv")
    ap.add_argument(
        "--approx", type=Path, default=None, help="a distilled ApproxNet dir (train approx output)"
    )
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.4, 0.3])
    ap.add_argument(
        "--calib", type=int, default=128, help="dev inputs (labels unused) the keep ratio is bisected on"
    )
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/core_sst2.json"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    console = Console()
    model = load_model(args.model)
    text = TextPreprocess.from_file(args.model / "tokenizer.json")
    examples = glue_tsv(args.data)
    pad_to = longest_length(examples, text, args.max_length)
    calib_np, _ = next(batches(examples[: args.calib], args.calib, text=text, max_length=args.max_length))
    calib = {k: torch.from_numpy(v) for k, v in calib_np.items()}
    sources: dict[str, torch.nn.Module | None] = {"oracle": None}
    if args.approx is not None:
        sources["approx"] = ApproxNet.load(args.approx, model.config).eval()

    def run(reducer, name: str, knob: float | None) -> dict:
        res = evaluate(
            SparseClassifier(model, reducer),
            examples,
            text=text,
            batch_size=64,
            task="SST-2",
            name=name,
            max_length=args.max_length,
            occupancy_length=pad_to,
        )
        row = {**res.to_dict(), "keep_ratio": knob}
        console.print(
            f"{name:28s} acc {100 * res.metrics['accuracy']:.1f} retention {res.retention:.3f} "
            f"occupancy {res.occupancy:.3f} FLOPs x{res.flops_ratio:.3f} (keep ratio {knob})"
        )
        return row

    t0 = time.time()
    rows = [run(DenseReducer(), "dense", None)]
    for target in args.targets:
        for src, approx in sources.items():
            for nesting in ("union", "count"):

                def make(r: float, a=approx, n=nesting) -> SttabtReducer:
                    return SttabtReducer(a, keep_ratio=r, nesting=n)

                knob = calibrate(model, make, calib, target, lo=0.01, hi=1.0, steps=14)
                rows.append(
                    {**run(make(knob), f"{nesting}-{src}@{target:g}", round(knob, 4)), "target": target}
                )

    table = Table(title=f"MiniLM-SST2, SST-2 dev ({len(examples)} sentences), nothing fine-tuned")
    for col in ("method", "accuracy %", "retention", "occupancy", "FLOPs ratio", "keep ratio"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["method"],
            f"{100 * r['metrics']['accuracy']:.1f}",
            f"{r['retention']:.3f}",
            f"{r['occupancy']:.3f}",
            f"{r['flops_ratio']:.3f}",
            str(r["keep_ratio"]),
        )
    console.print(table)
    write_json(
        args.out,
        {
            "benchmark": "core_sst2",
            "model": str(args.model),
            "approx": str(args.approx),
            "occupancy_length": pad_to,
            "calib_inputs": args.calib,
            "wall_s": time.time() - t0,
            "env": environment(),
            "results": rows,
        },
    )
    console.print(f"wrote {args.out} ({(time.time() - t0) / 60:.1f} min)")


if __name__ == "__main__":
    quiet_third_party()
    main()
