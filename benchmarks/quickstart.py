"""Quickstart: the whole STTABT path for DeiT-Tiny, offline, on a laptop-class CPU.

1. distil a ÷4 ApproxNet (interpolate init) on the training half of imagenet-sample
   (``split_half``, seed 0), held-out attention KL before/after (or ``--approx DIR``);
2. export the sparse STTABT pipeline (ApproxNet -> back-tracking -> sparse DeiT) and the
   dense model to ONNX, each self-verified by the exporter;
3. verify ONNX vs PyTorch parity on held-out images (``sttabt_edge.verify``);
4. top-1 and retention of both ONNX files on the held-out half (ONNX Runtime: ~3x cheaper than
   the PyTorch sparse path), analytic FLOPs from a PyTorch eval of the parity sample;
5. batch-1 latency of sparse vs dense ONNX, interleaved (``runtime.bench``);
6. summary table, summary.json and summary.png in ``--out``.

    make demo                                              # ~4 min on 2 cores -> quickstart_out/
    python benchmarks/quickstart.py --smoke --out /tmp/qs  # ~1 min, checks the path only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import SHARED, environment, write_json
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from sttabt_edge.compat import model_parts
from sttabt_edge.data import Example, batches, image_preprocess_for
from sttabt_edge.evaluate import evaluate
from sttabt_edge.export.pipeline import ExportRequest, run_export
from sttabt_edge.method.approxnet import ApproxNet, build_approxnet
from sttabt_edge.models.loading import load_model
from sttabt_edge.runtime import ImagePreprocess, load
from sttabt_edge.runtime.bench import bench
from sttabt_edge.runtime.predictor import Predictor
from sttabt_edge.train.approx import heldout_attention_kl, train_approx
from sttabt_edge.train.config import ApproxConfig, TrainConfig
from sttabt_edge.train.data import TrainData, prepare_data
from sttabt_edge.verify import reference_reducer, verify

# full: the README's main command; smoke: the same path with toy budgets (CI, ~1 min)
BUDGETS: dict[str, dict[str, int | bool]] = {
    "full": dict(steps=40, batch=16, eval_images=0, verify_images=64, kl_images=50, runs=100, warmup=10,
                 calib_samples=4, simplify=True),
    "smoke": dict(steps=2, batch=4, eval_images=16, verify_images=4, kl_images=4, runs=10, warmup=2,
                  calib_samples=2, simplify=False),
}


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class Phases:
    """Numbered rich rules per phase and their wall times."""

    def __init__(self, console: Console, total: int):
        self.console, self.total, self.times = console, total, {}
        self.t0 = time.perf_counter()

    @contextmanager
    def __call__(self, name: str, what: str) -> Iterator[None]:
        self.console.rule(f"[bold cyan]{len(self.times) + 1}/{self.total} {what}")
        t0 = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - t0, 2)
        elapsed = time.perf_counter() - self.t0
        self.console.print(f"[green]done[/] {name}: {self.times[name]:.1f} s (total {elapsed:.0f} s)")


def distil(net: torch.nn.Module, data: TrainData, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Train an ApproxNet into ``out`` (or take ``--approx``); held-out attention KL before/after."""
    if args.approx is not None:  # a prepared one: report its KL next to the untrained init's
        held = data.eval_batches(50, args.kl_images)
        init = heldout_attention_kl(net, build_approxnet(net, 4, "interpolate").eval(), held)
        after = heldout_attention_kl(net, ApproxNet.load(args.approx, net.config).eval(), held)
        return {"dir": str(args.approx), "trained_here": False, "heldout_attention_kl_before": init,
                "heldout_attention_kl": after, "kl_images": sum(len(x["pixel_values"]) for x, _ in held)}
    if out.exists():  # a previous quickstart's run: distil afresh (reuse one with --approx DIR)
        shutil.rmtree(out)
    cfg = TrainConfig(lr=5e-4, steps=args.steps, batch_size=args.batch, warmup=0.05, log_every=5,
                      eval_batch_size=50, max_eval_samples=args.kl_images, seed=0)
    train_approx(net, data, cfg=cfg, out=out, acfg=ApproxConfig(factor=4, init="interpolate"))
    report = json.loads((out / "report.json").read_text())
    n_eval = len(data.eval or [])
    return {"dir": str(out), "trained_here": True, "kl_images": min(args.kl_images or n_eval, n_eval),
            "batch_size": args.batch, **report}


def export_pair(args: argparse.Namespace, approx_dir: Path, console: Console) -> dict[str, dict[str, Any]]:
    """Sparse (STTABT + the ApproxNet) and dense ONNX graphs, each verified by the exporter."""
    out: dict[str, dict[str, Any]] = {}
    for name, method in (("sparse", "sttabt"), ("dense", "dense")):
        req = ExportRequest(model=str(args.model), out=args.out / f"deit_{name}.onnx", method=method,
                            approx=approx_dir if method == "sttabt" else None, keep_ratio=args.keep_ratio,
                            calib=args.data, calib_samples=args.calib_samples, latency_runs=0,
                            threads=args.threads, simplify=args.simplify)
        out[name] = run_export(req, warn=lambda m: console.print(f"[yellow]WARNING: {m}"))
        console.print(f"{name}: {out[name]['out']} ({out[name]['size_mb']:.1f} MB), exporter check "
                      f"max |dlogit| {out[name]['parity']['max_abs_diff']:.1e} on {args.calib_samples} images")
    return out


def onnx_accuracy(
    preds: dict[str, Predictor], held: list[Example], pre: ImagePreprocess, n_tokens: int
) -> dict[str, dict[str, Any]]:
    """Top-1 and retention (tokens entering each layer / ``n_tokens``) of each ONNX model, one pass."""
    hits = {name: 0 for name in preds}
    kept: dict[str, list[np.ndarray]] = {name: [] for name in preds}
    with Progress(transient=True) as bar:
        job = bar.add_task("ONNX top-1", total=len(held))
        for x, y in batches(held, 25, pre):  # each batch is preprocessed once for both models
            for name, p in preds.items():
                out = p.run(x)
                hits[name] += int((out["logits"].argmax(1) == y).sum())
                kept[name].append(np.asarray(out["kept_counts"], dtype=np.float64) / n_tokens)
            bar.advance(job, len(y))
    res = {}
    for name in preds:
        ret = np.concatenate(kept[name])  # (S, L)
        res[name] = {"top1": hits[name] / len(held), "retention": float(ret.mean()),
                     "retention_per_layer": ret.mean(0).round(4).tolist(), "images": len(held)}
    return res


def plot(summary: dict[str, Any], bench_res: dict[str, Any], path: Path) -> None:
    """Top-1 vs p50 latency (left) and the interleaved latency distributions (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, color in (("dense", "tab:gray"), ("sparse", "tab:red")):
        s = summary[name]
        ax.scatter(s["p50_ms"], 100 * s["top1"], s=80, color=color, label=name)
        ax.annotate(f"{name}\nret {s['retention']:.2f}, FLOPs x{s['flops_ratio']:.2f}",
                    (s["p50_ms"], 100 * s["top1"]), textcoords="offset points", xytext=(8, -4), fontsize=8)
    ax.set_xlabel("ONNX Runtime p50 latency, batch 1 (ms)")
    ax.set_ylabel(f"top-1 % ({summary['eval_images']} held-out images)")
    ax.set_title(f"DeiT-Tiny: STTABT r={summary['keep_ratio']:g} vs dense")
    ax.margins(x=0.35)
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right")
    bx.boxplot([bench_res["a"]["runs_ms"], bench_res["b"]["runs_ms"]], orientation="horizontal",
               showfliers=False)
    bx.set_yticks([1, 2], ["sparse", "dense"])
    bx.set_xlabel(f"latency ms ({plural(bench_res['threads'], 'thread')}, {bench_res['runs']} interleaved runs)")
    bx.set_title(f"latency ratio sparse / dense: {bench_res['ratio_p50']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_table(s: dict[str, Any], phases: dict[str, float]) -> Table:
    table = Table(title=f"DeiT-Tiny quickstart: {s['eval_images']} held-out imagenet-sample images, "
                        f"batch 1, {plural(s['threads'], 'thread')}")
    for col in ("model", "top-1 %", "retention", "GFLOPs", "FLOPs x", "p50 ms", "latency x", "ONNX |dlogit|"):
        table.add_column(col, justify="right")
    for name in ("dense", "sparse"):
        r = s[name]
        table.add_row("dense" if name == "dense" else f"STTABT r={s['keep_ratio']:g}",
                      f"{100 * r['top1']:.1f}", f"{r['retention']:.3f}", f"{r['gflops']:.3f}",
                      f"{r['flops_ratio']:.3f}", f"{r['p50_ms']:.1f}",
                      "1" if name == "dense" else f"{s['latency_ratio']:.3f}", f"{r['parity_max_abs_logit']:.1e}")
    table.caption = (f"ApproxNet held-out attention KL {s['approx_kl_before']:.3f} -> {s['approx_kl_after']:.3f}; "
                     "phases " + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
                     + f"; total {s['wall_time_s'] / 60:.1f} min")
    return table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=SHARED / "models" / "deit-tiny-imagenet")
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "imagenet-sample")
    ap.add_argument("--out", type=Path, default=Path("quickstart_out"))
    ap.add_argument("--smoke", action="store_true", help="toy budgets (~1 min): checks the path only")
    ap.add_argument("--approx", type=Path, default=None, help="a prepared ApproxNet dir: skip distillation")
    ap.add_argument("--steps", type=int, default=None, help="ApproxNet distillation steps")
    ap.add_argument("--batch", type=int, default=None, help="distillation batch size")
    ap.add_argument("--eval-images", type=int, default=None, help="held-out images for top-1 (0: all 500)")
    ap.add_argument("--verify-images", type=int, default=None, help="held-out images for the parity check")
    ap.add_argument("--kl-images", type=int, default=None, help="held-out images for the attention KL")
    ap.add_argument("--runs", type=int, default=None, help="timed latency runs per model")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--calib-samples", type=int, default=None, help="images the exporter verifies on")
    ap.add_argument("--simplify", action=argparse.BooleanOptionalAction, default=None,
                    help="onnxslim the exports (~20 s each; latency unchanged); smoke: off")
    ap.add_argument("--keep-ratio", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads of the latency benchmark")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="threads for distil/export/verify/accuracy (default: --threads, 1 on a busy machine)")
    args = ap.parse_args(argv)
    for key, value in BUDGETS["smoke" if args.smoke else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    console = Console(width=None if sys.stdout.isatty() else 120)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.torch_threads is None:  # busy machine: 2 OpenMP threads stall at every barrier (~3x slower here)
        load_avg = os.getloadavg()[0]
        args.torch_threads = args.threads if load_avg < 1.0 else 1
        if args.torch_threads < args.threads:
            console.print(f"[yellow]load average {load_avg:.1f}: 1 thread for PyTorch and evaluation "
                          f"(--torch-threads to override); the benchmark still uses {args.threads}")
    torch.set_num_threads(args.torch_threads)
    phases = Phases(console, 6)

    with phases("distil", f"ApproxNet /4: {'load ' + str(args.approx) if args.approx else f'{args.steps} steps'}"):
        net = load_model(args.model)
        data = prepare_data(args.data, net, args.model, labeled=False, seed=0)
        approx = distil(net, data, args, args.out / "approx")
        console.print(f"held-out attention KL {approx['heldout_attention_kl_before']:.4f} (init) -> "
                      f"{approx['heldout_attention_kl']:.4f} on {approx['kl_images']} images")
    with phases("export", f"export sparse (keep ratio {args.keep_ratio:g}) and dense ONNX"):
        exports = export_pair(args, Path(approx["dir"]), console)
    preds = {name: load(e["out"], threads=args.torch_threads) for name, e in exports.items()}
    reducers = {name: reference_reducer(p.metadata.raw, net) for name, p in preds.items()}
    held: list[Example] = data.eval_examples(args.eval_images)
    with phases("verify", f"ONNX vs PyTorch parity on {args.verify_images} held-out images"):
        parity = {name: verify(preds[name], net, reducers[name], held[: args.verify_images]).to_dict()
                  for name in preds}
        for name, rep in parity.items():
            console.print(f"{name}: max |dlogit| {rep['max_abs_logit']:.1e}, top-1 agreement "
                          f"{rep['top1_agreement']:.3f}, kept agreement {rep['kept_agreement']}, "
                          f"{'[green]passed' if rep['passed'] else '[red]FAILED ' + '; '.join(rep['failures'])}")
    with phases("accuracy", f"top-1 and retention on {len(held)} held-out images (ONNX Runtime)"):
        pre = image_preprocess_for(net)
        n_tokens = (net.config.image_size // net.config.patch_size) ** 2 + model_parts(net).num_prefix_tokens
        evals = onnx_accuracy(preds, held, pre, n_tokens)
        for name in preds:  # analytic FLOPs: fixed per-layer counts, so the parity sample is exact
            r = evaluate(net, reducers[name], held[: args.verify_images], image=pre, batch_size=50, name=name)
            evals[name].update(gflops=r.gflops, flops_ratio=r.flops_ratio, torch_top1_sample=r.metrics["accuracy"])
    with phases("bench", f"latency sparse vs dense ONNX, batch 1, {plural(args.threads, 'thread')}, interleaved"):
        b = bench(exports["sparse"]["out"], vs=exports["dense"]["out"], threads=args.threads, batch=1,
                  runs=args.runs, warmup=args.warmup).to_dict()
        console.print(f"p50 {b['a']['p50_ms']:.1f} vs {b['b']['p50_ms']:.1f} ms, ratio {b['ratio_p50']:.3f} "
                      f"(p10 {b['ratio_p10']:.3f}, p90 {b['ratio_p90']:.3f})")
    with phases("report", "summary table, JSON and plot"):
        summary: dict[str, Any] = {
            "keep_ratio": args.keep_ratio, "threads": args.threads, "torch_threads": args.torch_threads,
            "eval_images": len(held),
            "approx_kl_before": approx["heldout_attention_kl_before"],
            "approx_kl_after": approx["heldout_attention_kl"], "latency_ratio": b["ratio_p50"],
            "all_parity_passed": all(r["passed"] for r in parity.values()),
        }
        for name, stats in (("sparse", b["a"]), ("dense", b["b"])):
            e, p = evals[name], parity[name]
            summary[name] = {"top1": e["top1"], "retention": e["retention"],
                             "gflops": e["gflops"], "flops_ratio": e["flops_ratio"], "p50_ms": stats["p50_ms"],
                             "parity_max_abs_logit": p["max_abs_logit"],
                             "parity_top1_agreement": p["top1_agreement"], "onnx": exports[name]["out"]}
        plot(summary, b, args.out / "summary.png")
    summary["wall_time_s"] = round(time.perf_counter() - phases.t0, 1)
    result = {
        "benchmark": "quickstart", "budget": "smoke" if args.smoke else "full",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "split": "split_half(seed=0) of imagenet-sample: train half distils, held-out half evaluates",
        "accuracy_backend": "ONNX Runtime (the exported files); FLOPs analytic, from PyTorch eval of the "
        "parity sample (image token counts are fixed, so per-image FLOPs are too)",
        "summary": summary, "phases_s": phases.times, "wall_time_s": summary["wall_time_s"],
        "approx": approx, "export": exports, "parity": parity, "eval": evals, "bench": b, "env": environment(),
    }
    write_json(args.out / "summary.json", result)
    console.print(summary_table(summary, phases.times))
    console.print(f"wrote {args.out / 'summary.json'}, {args.out / 'summary.png'}; "
                  f"total wall time {result['wall_time_s']:.0f} s")
    if not summary["all_parity_passed"]:
        console.print("[red]parity check FAILED; see summary.json")
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["summary"]["all_parity_passed"] else 1)
