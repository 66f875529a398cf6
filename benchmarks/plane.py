"""The accuracy–latency plane: every method as the file a user would ship, measured the same way.

Each point is an ONNX export (fp32, and dynamic INT8 with ``--quantize int8``) of one method at one
knob: dense; STTABT top-k (one keep ratio, the given distilled ApproxNet); trained dirs from
``sttabt-edge train concrete|baseline`` (``--trained NAME=DIR``: concrete STTABT, LTP, trained
top-k); ToMe and EViT-style top-k at the given keep ratios, training-free (ToMe exports for ViT
only: its merge counts are Python ints of N). For every file, in one run:

* accuracy and real-token retention on the evaluation set through the torch-free runtime;
* batch-1 latency against dense fp32 (``runtime.bench.bench(file, vs=dense)``: worker processes,
  block alternation) on the evaluation inputs themselves, taken in turn (``bench --inputs``), so
  data-dependent token counts are those of real inputs;
* analytic FLOPs (ApproxNet and back-tracking included) from the export summary.

    python benchmarks/plane.py --model ../shared/models/minilm-l6-sst2 --data ../shared/data/glue/SST-2 \\
        --approx runs/sst2/approx_f4h1 --trained concrete@0.4=runs/sst2/concrete_r040 \\
        --sttabt-ratios 0.5 0.3 --quantize int8 --fuse --out benchmarks/results/plane_sst2.json

Writes the JSON (with the commit) and a PNG beside it: accuracy against p50 latency (ms), and
against FLOPs. Run it on a quiet machine: the latency pairs are only as good as the machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from common import environment, quiet_third_party, write_json
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from sttabt_edge.compress.stages import runtime_accuracy
from sttabt_edge.data import Example, glue_tsv, image_folder, model_class_names
from sttabt_edge.export.pipeline import ExportRequest, fp32_sibling, run_export
from sttabt_edge.model_info import config_file, describe, is_trained_dir, read_config
from sttabt_edge.reducers.spec import ReducerOptions, spec_from_options
from sttabt_edge.runtime.bench import bench
from sttabt_edge.runtime.bench_inputs import write_text_inputs


def eval_examples(args: argparse.Namespace) -> list[Example]:
    """The evaluation set: a GLUE task's dev.tsv (or --eval-data), or an image folder's held-out half."""
    if args.data.is_dir() and (args.data / "dev.tsv").is_file():
        examples = glue_tsv(args.eval_data or args.data / "dev.tsv")
    else:
        from sttabt_edge.train.sources import split_half

        examples = image_folder(args.eval_data or args.data, model_class_names(args.model))
        if args.eval_data is None:  # the half that `train` never sees
            examples = split_half(examples)[1]
    return examples[: args.max_eval] if args.max_eval else examples


def points(args: argparse.Namespace) -> list[dict[str, Any]]:
    """(name, ExportRequest options) of every point to export."""
    out: list[dict[str, Any]] = [{"name": "dense", "method": "dense", "model": str(args.model)}]
    knobs = {"sttabt": args.sttabt_ratios, "topk": args.topk_ratios, "tome": args.tome_ratios}
    for method, ratios in knobs.items():
        for r in ratios:
            p = {"name": f"{method}@{r:g}", "method": method, "model": str(args.model), "keep_ratio": r}
            if method == "sttabt":
                p["approx"] = args.approx
            out.append(p)
    for item in args.trained:
        name, _, path = item.partition("=")
        out.append({"name": name, "method": "sttabt", "model": path})
    return out


def export_point(p: dict[str, Any], work: Path, args: argparse.Namespace, calib: Path) -> dict[str, Any]:
    from sttabt_edge.export.request import GraphOptions, ModelSource, QuantizeOptions, VerifyOptions

    dst = work / f"{p['name'].replace('@', '_')}.onnx"
    trained = is_trained_dir(p["model"])  # its own reducer
    spec = None if trained else spec_from_options(p["method"], ReducerOptions(keep_ratio=p.get("keep_ratio")))
    req = ExportRequest(
        source=ModelSource(model=p["model"], approx=p.get("approx")),
        out=dst,
        reducer=spec,
        graph=GraphOptions(fuse=args.fuse),
        quantize=QuantizeOptions(mode=args.quantize),
        verify=VerifyOptions(calib=calib, calib_samples=16, latency_runs=0, threads=args.threads),
    )
    summary = run_export(req)
    files = {"fp32": fp32_sibling(dst), "int8": dst} if args.quantize else {"fp32": dst}
    return {"files": files, "flops": summary["flops"], "method": summary["method"]}


def setting_name(threads: int, spinning: bool) -> str:
    return f"{threads} thread{'s' if threads > 1 else ''}, spinning {'on' if spinning else 'off'}"


def time_file(
    path: Path, dense: Path, inputs: Path, args: argparse.Namespace, threads: int, spinning: bool
) -> dict[str, Any]:
    """One file against dense fp32 at one (threads, spinning) setting, on the evaluation inputs."""
    lat = bench(
        path,
        vs=dense,
        threads=threads,
        runs=args.runs,
        warmup=3,
        block=args.block,
        inputs=inputs,
        progress=False,
        spinning=spinning,
    )
    return {
        "threads": threads,
        "spinning": spinning,
        "p50_ms": lat.a.p50_ms,
        "dense_fp32_p50_ms": lat.b.p50_ms if lat.b else None,
        "x_dense_fp32": lat.ratio_p50,
        "mb": lat.a.size_mb,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="the dense fine-tuned model dir")
    ap.add_argument("--data", type=Path, required=True, help="GLUE task dir or image folder")
    ap.add_argument("--eval-data", type=Path, default=None, help="default: dev.tsv / the held-out half")
    ap.add_argument("--approx", type=Path, default=None, help="distilled ApproxNet for STTABT top-k points")
    ap.add_argument("--trained", nargs="*", default=[], help="NAME=DIR of trained STTABT / baseline dirs")
    ap.add_argument("--sttabt-ratios", type=float, nargs="*", default=[], help="STTABT top-k keep ratios")
    ap.add_argument(
        "--topk-ratios",
        type=float,
        nargs="*",
        default=[],
        help="EViT top-k: fraction of N entering each later layer",
    )
    ap.add_argument(
        "--tome-ratios",
        type=float,
        nargs="*",
        default=[],
        help="ToMe: fraction left after the last layer (constant r)",
    )
    ap.add_argument("--quantize", choices=["int8"], default=None)
    ap.add_argument(
        "--fuse", action="store_true", help="fused attention kernels (docs/export.md), every file"
    )
    ap.add_argument(
        "--threads", type=int, nargs="+", default=[2], help="intra-op threads; each count times every file"
    )
    ap.add_argument(
        "--spinning",
        choices=["off", "on"],
        nargs="+",
        default=["off"],
        help="ORT's intra-op spinning (on: ORT's default, inside a run only); each times every file",
    )
    ap.add_argument("--runs", type=int, default=20, help="latency rounds per file")
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--max-eval", type=int, default=0, help="evaluate only the first N (0: all)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sttabt-plane"), help="exported files")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/plane.json"))
    args = ap.parse_args()
    if args.sttabt_ratios and args.approx is None:
        raise SystemExit("error: STTABT top-k points need --approx DIR (a distilled ApproxNet)")
    if min(args.threads) < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    # every (threads, spinning) pair times every file; the first pair leads the table and the plot
    settings = [(t, spin == "on") for t in args.threads for spin in args.spinning]
    t0 = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    examples = eval_examples(args)
    # images: patches + prefix, for the runtime's retention (text counts its masks and ignores this)
    cfg_path = config_file(args.model)
    num_tokens = describe(read_config(cfg_path)).get("tokens") if cfg_path is not None else None
    inputs = write_text_inputs([e.inputs for e in examples], args.work / "eval_inputs.txt")
    calib = (
        args.data / "train.tsv" if (args.data / "train.tsv").is_file() else args.data
    )  # parity + FLOPs batch
    todo = points(args)
    rows: list[dict[str, Any]] = []
    with Progress(console=Console(stderr=True), transient=True) as bar:
        job = bar.add_task("export, evaluate, time", total=len(todo))
        exported = {p["name"]: export_point(p, args.work, args, calib) for p in todo}
        dense = exported["dense"]["files"]["fp32"]
        for p in todo:
            for kind, path in exported[p["name"]]["files"].items():
                acc = runtime_accuracy(path, examples, num_tokens=num_tokens)
                timed = [time_file(path, dense, inputs, args, t, spin) for t, spin in settings]
                rows.append(
                    {
                        "name": p["name"],
                        "method": exported[p["name"]]["method"],  # a trained dir's own (ltp, sttabt, ...)
                        "kind": kind,
                        "file": str(path),
                        "accuracy": acc["accuracy"],
                        "retention": acc.get("retention"),
                        "flops_ratio": exported[p["name"]]["flops"].get("ratio"),
                        **timed[0],  # the first setting leads the table, the plot and the flat fields
                        "latency": timed,
                    }
                )
            bar.advance(job)
    by = {(r["name"], r["kind"]): r for r in rows}
    if ("dense", "int8") in by:  # the competitor a user picks: ratios to dense INT8 from the common reference
        ref = by[("dense", "int8")]
        for r in rows:
            r["x_dense_int8"] = r["x_dense_fp32"] / ref["x_dense_fp32"]
            for mine, theirs in zip(r["latency"], ref["latency"], strict=True):
                mine["x_dense_int8"] = mine["x_dense_fp32"] / theirs["x_dense_fp32"]
    wall = time.time() - t0
    table = Table(title=f"{len(examples)} evaluation examples; batch 1, {setting_name(*settings[0])}")
    for col in (
        "point",
        "file",
        "acc %",
        "retention",
        "FLOPs x",
        "p50 ms",
        "x dense fp32",
        "x dense INT8",
        "MB",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["name"],
            r["kind"],
            f"{r['accuracy']:.2f}",
            "-" if r["retention"] is None else f"{r['retention']:.3f}",
            "-" if r["flops_ratio"] is None else f"{r['flops_ratio']:.3f}",
            f"{r['p50_ms']:.2f}",
            f"{r['x_dense_fp32']:.3f}",
            f"{r['x_dense_int8']:.3f}" if "x_dense_int8" in r else "-",
            f"{r['mb']:.1f}",
        )
    Console().print(table)
    if len(settings) > 1:
        Console().print(settings_table(rows, settings))
    payload = {
        **environment(),
        "benchmark": "plane",
        "model": str(args.model),
        "data": str(args.data),
        "eval_examples": len(examples),
        "threads": args.threads[0],
        "spinning": settings[0][1],
        "settings": [{"threads": t, "spinning": spin} for t, spin in settings],
        "runs": args.runs,
        "block": args.block,
        "fuse": args.fuse,
        "rows": rows,
        "wall_s": wall,
    }
    write_json(args.out, payload)
    plot(rows, args.out.with_suffix(".png"), f"{args.model.name}: {len(examples)} examples, batch 1")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} ({wall / 60:.1f} min)")


def settings_table(rows: list[dict[str, Any]], settings: list[tuple[int, bool]]) -> Table:
    """Each file's ratio at every setting: × dense INT8 where there is one, else × dense fp32."""
    key = "x_dense_int8" if "x_dense_int8" in rows[0] else "x_dense_fp32"
    table = Table(title=f"{key.replace('_', ' ')} at each setting")
    for col in ("point", "file", *(setting_name(t, spin) for t, spin in settings)):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["name"], r["kind"], *(f"{lat[key]:.3f}" for lat in r["latency"]))
    return table


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    families = sorted({r["name"].split("@")[0] for r in rows})
    colors = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(families)}
    for r in rows:
        c, marker = colors[r["name"].split("@")[0]], "s" if r["kind"] == "int8" else "o"
        x = r["x_dense_fp32"]  # per-round median ratio: robust to a machine whose speed drifts between pairs
        left.scatter(x, r["accuracy"], color=c, marker=marker, s=40)
        left.annotate(f"{r['name']} {r['kind']}", (x, r["accuracy"]), fontsize=6, alpha=0.8)
        if r["kind"] == "fp32" and r["flops_ratio"] is not None:
            right.scatter(r["flops_ratio"], r["accuracy"], color=c, s=40)
            right.annotate(r["name"], (r["flops_ratio"], r["accuracy"]), fontsize=6, alpha=0.8)
    left.set(
        xlabel="p50 latency / dense fp32 (squares: INT8)",
        ylabel="accuracy %",
        title="accuracy vs measured latency",
    )
    right.set(xlabel="FLOPs / dense (ApproxNet included)", ylabel="accuracy %", title="accuracy vs FLOPs")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    quiet_third_party()
    main()
