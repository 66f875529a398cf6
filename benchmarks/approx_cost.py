"""What the mask computation costs in the exported graph: ApproxNet width / head options.

For each model shape and ApproxNet option (width divisor ``factor``, head count ``heads``)
this exports the STTABT pipeline (top-k at ``--keep-ratio``) and the dense model to ONNX
with a fixed batch of 1, then times in onnxruntime (2 threads by default, one run at a time,
round-robin): the ApproxNet, the back-tracking masks and the sparse model as separate
graphs, the whole pipeline, and the dense graph; ratios are medians of per-round ratios
to dense. Every graph is checked against PyTorch first.

ApproxNets here are UNTRAINED (interpolate init): the numbers are cost, not accuracy.
Shapes: the shared DeiT-Tiny and MiniLM-SST2 checkpoints, plus DeiT-S and BERT-base
shapes with random weights (latency does not depend on the weights).

    python benchmarks/approx_cost.py --out benchmarks/results/approx_cost.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import SHARED, environment, quiet_third_party, write_json
from rich.console import Console
from rich.table import Table

from sttabt_edge.export.onnx import export_onnx
from sttabt_edge.export.profile import latency_breakdown
from sttabt_edge.method.approxnet import build_approxnet
from sttabt_edge.models.loading import load_model
from sttabt_edge.reducers.dense import DenseReducer
from sttabt_edge.reducers.sttabt import SttabtReducer
from sttabt_edge.sparse_model import SparseClassifier

# name: (checkpoint dir or None for a random-weight shape, HF class, config overrides, text length)
CASES = {
    "deit-tiny": (SHARED / "models" / "deit-tiny-imagenet", None, None, None),
    "deit-s-shape": (None, "vit", dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536), None),
    "minilm-sst2-128": (SHARED / "models" / "minilm-l6-sst2", None, None, 128),
    "bert-base-shape-128": (
        None,
        "bert",
        dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072),
        128,
    ),
}


def shape_model(kind: str, overrides: dict) -> torch.nn.Module:
    """A random-weight ViT (224px, patch 16, 12 layers) or BERT (12 layers) of the given widths."""
    from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    if kind == "vit":
        cfg = ViTConfig(num_hidden_layers=12, image_size=224, patch_size=16, num_labels=1000, **overrides)
        cfg._attn_implementation = "eager"
        return ViTForImageClassification(cfg).eval()
    cfg = BertConfig(num_hidden_layers=12, num_labels=2, **overrides)
    cfg._attn_implementation = "eager"
    return BertForSequenceClassification(cfg).eval()


def sample_inputs(model: torch.nn.Module, length: int | None) -> dict[str, torch.Tensor]:
    """Batch 1: a random image, or ``length`` random token ids without padding."""
    g = torch.Generator().manual_seed(0)
    if length is None:
        size = int(model.config.image_size)
        return {"pixel_values": torch.randn(1, 3, size, size, generator=g)}
    ids = torch.randint(1000, int(model.config.vocab_size), (1, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def options(heads: int, hidden: int) -> list[tuple[int, int]]:
    """(factor, heads) pairs: widths /4 and /8, with the model's heads, a third of them (if it
    divides) and one head; only those whose per-head width is a whole number."""
    picks = sorted({heads, heads // 3 if heads % 3 == 0 else heads, 1}, reverse=True)
    return [(f, h) for f in (4, 8) for h in picks if (hidden // f) % h == 0]


def run_case(name: str, keep_ratio: float, threads: int, runs: int, console: Console) -> list[dict]:
    path, kind, overrides, length = CASES[name]
    model = load_model(str(path)).eval() if path is not None else shape_model(kind, overrides)
    sample = sample_inputs(model, length)
    cfg = model.config
    rows = []
    with tempfile.TemporaryDirectory(prefix="approx-cost-") as tmp:
        work = Path(tmp)
        dense = export_onnx(
            SparseClassifier(model, DenseReducer()), work / "dense.onnx", example_inputs=sample, batch=1
        ).path
        for factor, heads in options(int(cfg.num_attention_heads), int(cfg.hidden_size)):
            t0 = time.perf_counter()
            approx = build_approxnet(model, factor, "interpolate", heads=heads).eval()
            reducer = SttabtReducer(approx, keep_ratio=keep_ratio).eval()
            sc = SparseClassifier(model, reducer)
            pipe = export_onnx(
                sc, work / f"sttabt_{factor}_{heads}.onnx", example_inputs=sample, batch=1
            ).path
            ms = latency_breakdown(
                sc,
                pipe,
                sample,
                work / f"stages_{factor}_{heads}",
                dense=dense,
                threads=threads,
                runs=runs,
                batch=1,
            )
            d = ms["dense"]
            row = {
                "case": name,
                "factor": factor,
                "heads": heads,
                "teacher_heads": int(cfg.num_attention_heads),
                "tokens": int(sample[next(iter(sample))].shape[-1]) if length else None,
                "ms": ms,
                "ratio_to_dense": {
                    k: ms[f"{k}_vs_dense"] for k in ("approxnet", "masks", "sparse_model", "pipeline")
                },
                "mask_cost_ratio": ms["approxnet_vs_dense"] + ms["masks_vs_dense"],
                "seconds": time.perf_counter() - t0,
            }
            rows.append(row)
            r = row["ratio_to_dense"]
            console.print(
                f"{name} /{factor} h{heads}: approx {r['approxnet']:.3f} masks {r['masks']:.3f} "
                f"sparse {r['sparse_model']:.3f} pipeline {r['pipeline']:.3f} (dense {d:.1f} ms)"
            )
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{r['case'].replace('-shape', '').replace('-sst2', '')} /{r['factor']} h{r['heads']}" for r in rows
    ]
    parts = [("approxnet", "ApproxNet"), ("masks", "back-tracking"), ("sparse_model", "sparse model")]
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(rows)), 4.5))
    bottom = [0.0] * len(rows)
    for key, label in parts:
        vals = [r["ratio_to_dense"][key] for r in rows]
        ax.bar(range(len(rows)), vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.scatter(
        range(len(rows)),
        [r["ratio_to_dense"]["pipeline"] for r in rows],
        color="k",
        marker="_",
        s=300,
        label="whole pipeline (one graph)",
        zorder=3,
    )
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axhline(0.08, color="red", lw=0.8, ls="--", label="8% goal for ApproxNet + masks")
    ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=40, ha="right")
    ax.set_ylabel("latency / dense latency (ORT, batch 1)")
    ax.set_title("STTABT stage costs by ApproxNet option (untrained; top-k keep ratio as in JSON)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--keep-ratio", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/approx_cost.json"))
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from an existing --out JSON")
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads(args.out.read_text())["rows"], args.out.with_suffix(".png"))
        return
    console = Console()
    t0 = time.perf_counter()
    rows = []
    for name in args.cases:
        rows += run_case(name, args.keep_ratio, args.threads, args.runs, console)
    table = Table(
        title=f"mask cost vs dense (ORT {args.threads} threads, batch 1, keep ratio {args.keep_ratio})"
    )
    for col in (
        "case",
        "factor",
        "heads",
        "approx",
        "masks",
        "approx+masks",
        "sparse",
        "pipeline",
        "dense ms",
    ):
        table.add_column(col)
    for r in rows:
        q = r["ratio_to_dense"]
        table.add_row(
            r["case"],
            str(r["factor"]),
            str(r["heads"]),
            f"{q['approxnet']:.3f}",
            f"{q['masks']:.3f}",
            f"{r['mask_cost_ratio']:.3f}",
            f"{q['sparse_model']:.3f}",
            f"{q['pipeline']:.3f}",
            f"{r['ms']['dense']:.1f}",
        )
    console.print(table)
    payload = {
        "benchmark": "approx_cost",
        "command": "python benchmarks/approx_cost.py "
        + " ".join(
            [
                f"--cases {' '.join(args.cases)}",
                f"--keep-ratio {args.keep_ratio}",
                f"--threads {args.threads}",
                f"--runs {args.runs}",
                f"--out {args.out}",
            ]
        ),
        "keep_ratio": args.keep_ratio,
        "threads": args.threads,
        "runs": args.runs,
        "batch": 1,
        "note": "untrained ApproxNets (cost only); ms: medians; ratios: medians of per-round ratios to dense, "
        "graphs timed round-robin in one process, one run at a time",
        "env": environment(),
        "rows": rows,
        "wall_time_s": time.perf_counter() - t0,
    }
    write_json(args.out, payload)
    plot(rows, args.out.with_suffix(".png"))
    console.print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    quiet_third_party()
    main()
