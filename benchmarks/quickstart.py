"""Quickstart: the whole STTABT path, offline, on a laptop-class CPU, ending at a deployable file.

Default task: MiniLM-SST2 (BERT, 6 layers) on SST-2, where a short distillation is enough.

1. distil a /4 ApproxNet on SST-2 *train* sentences (labels unused), or ``--approx DIR``;
2. bisect ONE keep ratio r for every layer so the mean retention on unlabeled train inputs
   (those of >= 16 tokens: sentence-like) is ``--target`` (under the union back-tracking rule r is far below the retention it yields);
3. export STTABT and dense to ONNX fp32 (self-verified against PyTorch) and dynamic INT8
   (the ApproxNet kept fp32, so INT8 STTABT keeps exactly fp32's tokens);
4. ``sttabt_edge.verify`` of all four files on held-out dev sentences (INT8: top-1 and kept-token
   agreement, not logit equality);
5. accuracy, retention and occupancy of all four on the 872 dev sentences through the
   torch-free runtime; analytic FLOPs (ApproxNet and back-tracking included) from PyTorch;
6. batch-1 latency, 2 ORT threads, worker processes, block alternation (``bench --vs``):
   every file vs dense fp32, STTABT INT8 vs dense INT8;
7. table, summary.json (with the git commit) and summary.png in ``--out``; exit 1 on a failed parity check.

    make demo-training-free                                # ~5 min on 2 quiet cores -> quickstart_out/
    python benchmarks/quickstart.py --smoke --out /tmp/qs  # ~1 min, toy budgets: checks the path only
    python benchmarks/quickstart.py --task deit            # DeiT-Tiny on imagenet-sample (split_half)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from common import SHARED, environment, quiet_third_party, write_json
from quickstart_report import model_rows, plot, summary_table
from quickstart_steps import (
    analytic_flops,
    check_parity,
    choose_keep_ratio,
    distil,
    export_models,
    latency,
    onnx_accuracy,
    onnx_files,
)
from rich.console import Console

from sttabt_edge.compat import model_parts
from sttabt_edge.data import longest_length
from sttabt_edge.defaults import APPROX_FACTOR, APPROX_HEADS
from sttabt_edge.method.approxnet import ApproxNet
from sttabt_edge.models.loading import load_model
from sttabt_edge.runtime import load
from sttabt_edge.train.data import prepare_data

GLUE = SHARED / "data" / "glue" / "SST-2"
# per task: what to run on and its training recipe (SST-2: benchmarks/recipes/approx_sst2.json's lr/clip)
TASKS: dict[str, dict[str, Any]] = {
    "sst2": dict(
        title="MiniLM-SST2 on SST-2",
        model=SHARED / "models" / "minilm-l6-sst2",
        data=GLUE / "train.tsv",
        eval_data=GLUE / "dev.tsv",
        eval_name="SST-2 dev sentences",
        export_calib=GLUE / "train.tsv",
        steps=1200,
        batch=32,
        lr=1e-4,
        grad_clip=0.5,
        max_length=64,
        target=0.5,
        calib_samples=256,
        calib_min_tokens=16,
        flops_examples=0,
    ),
    "deit": dict(
        title="DeiT-Tiny on imagenet-sample",
        model=SHARED / "models" / "deit-tiny-imagenet",
        data=SHARED / "data" / "imagenet-sample",
        eval_data=None,
        eval_name="held-out images",
        export_calib=SHARED / "data" / "imagenet-sample",
        steps=150,
        batch=16,
        lr=5e-4,
        grad_clip=1.0,
        max_length=128,
        target=0.7,
        calib_samples=64,
        calib_min_tokens=0,
        flops_examples=100,
    ),
}
# full: the README's command; smoke: the same path with toy budgets
# (tests/benchmarks/test_quickstart.py, ~1 min)
BUDGETS: dict[str, dict[str, Any]] = {
    "full": dict(
        bisect_steps=12,
        verify_examples=128,
        eval_examples=0,
        kl_samples=256,
        runs=50,
        warmup=5,
        block=5,
        export_samples=16,
        simplify=False,
    ),
    "smoke": dict(
        steps=4,
        batch=8,
        calib_samples=64,
        bisect_steps=8,
        verify_examples=16,
        eval_examples=64,
        kl_samples=16,
        flops_examples=64,
        runs=4,
        warmup=1,
        block=2,
        export_samples=4,
        simplify=False,
    ),
}
PHASES = ("distil", "calibrate", "export", "verify", "accuracy", "bench", "report")


class Phases:
    """Numbered rich rules per phase and their wall times."""

    def __init__(self, console: Console):
        self.console, self.times = console, {}
        self.t0 = time.perf_counter()

    @contextmanager
    def __call__(self, name: str, what: str) -> Iterator[None]:
        self.console.rule(f"[bold cyan]{len(self.times) + 1}/{len(PHASES)} {what}")
        t0 = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - t0, 2)
        elapsed = time.perf_counter() - self.t0
        self.console.print(f"[green]done[/] {name}: {self.times[name]:.1f} s (total {elapsed:.0f} s)")


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Options; unset ones come from the budget (smoke), then the task, then the full budget."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(TASKS), default="sst2")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=None, help="training inputs (labels unused)")
    ap.add_argument("--eval-data", type=Path, default=None, help="held-out labelled data (text: dev.tsv)")
    ap.add_argument("--out", type=Path, default=Path("quickstart_out"))
    ap.add_argument("--smoke", action="store_true", help="toy budgets (~1 min): checks the path only")
    ap.add_argument("--approx", type=Path, default=None, help="a prepared ApproxNet dir: skip distillation")
    ap.add_argument("--factor", type=int, default=APPROX_FACTOR, help="ApproxNet widths divided by this")
    ap.add_argument(
        "--heads",
        type=int,
        default=APPROX_HEADS,
        help=f"ApproxNet heads (default {APPROX_HEADS}; 0: the model's)",
    )
    ap.add_argument("--target", type=float, default=None, help="mean retention the keep ratio is bisected to")
    for flag, kind, what in (
        ("--steps", int, "distillation steps"),
        ("--batch", int, "distillation batch"),
        ("--lr", float, None),
        ("--grad-clip", float, None),
        ("--max-length", int, None),
        ("--calib-samples", int, "training inputs the keep ratio is bisected on"),
        ("--calib-min-tokens", int, "text: shortest training input calibrated on"),
        ("--bisect-steps", int, None),
        ("--verify-examples", int, "held-out parity inputs"),
        ("--eval-examples", int, "held-out examples for accuracy (0: all)"),
        ("--flops-examples", int, "held-out examples for analytic FLOPs (0: all)"),
        ("--kl-samples", int, "held-out inputs for the attention KL"),
        ("--runs", int, "latency rounds per pair"),
        ("--warmup", int, None),
        ("--block", int, "runs per model per round (first dropped)"),
        ("--export-samples", int, "inputs the exporter verifies on"),
    ):
        ap.add_argument(flag, type=kind, default=None, help=what)
    ap.add_argument(
        "--seq-len", type=int, default=None, help="text latency input length (default: mean dev length)"
    )
    ap.add_argument(
        "--long-seq-len",
        type=int,
        default=64,
        help="text: a second latency length (64: SST-2's longest sentences; 0: none)",
    )
    ap.add_argument(
        "--simplify", action=argparse.BooleanOptionalAction, default=None, help="onnxslim the exports"
    )
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads of the latency benchmark")
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="threads for distil/export/verify/accuracy (default: --threads, 1 on a busy machine)",
    )
    args = ap.parse_args(argv)
    layers = [BUDGETS["smoke"]] if args.smoke else []
    for layer in layers + [TASKS[args.task], BUDGETS["full"]]:
        for key, value in layer.items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
    return args


def torch_threads(args: argparse.Namespace, console: Console) -> int:
    """2 OpenMP threads on a loaded machine stall at every barrier (~3x slower here): use 1 there."""
    if args.torch_threads is not None:
        return args.torch_threads
    load_avg = os.getloadavg()[0]
    if load_avg < 1.0:
        return args.threads
    console.print(
        f"[yellow]load average {load_avg:.1f}: 1 thread for PyTorch and evaluation "
        f"(--torch-threads to override); the latency benchmark still uses {args.threads}"
    )
    return 1


def print_parity(console: Console, parity: dict[str, dict[str, Any]]) -> None:
    for name, rep in parity.items():
        status = "[green]passed" if rep["passed"] else "[red]FAILED " + "; ".join(rep["failures"])
        console.print(
            f"{name}: max |dlogit| {rep['max_abs_logit']:.1e}, top-1 agreement {rep['top1_agreement']:.3f},"
            f" kept agreement {rep['kept_agreement']}, {status}"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)
    args.out.mkdir(parents=True, exist_ok=True)
    args.torch_threads = torch_threads(args, console)
    torch.set_num_threads(args.torch_threads)
    phases = Phases(console)
    warn = lambda m: console.print(f"[yellow]WARNING: {m}")  # noqa: E731

    with phases(
        "distil", f"ApproxNet /{args.factor}: {args.approx or f'{args.steps} steps'} on {args.data.name}"
    ):
        net = load_model(args.model)
        data = prepare_data(args.data, net, args.model, args.eval_data, labeled=False, seed=0)
        approx = distil(net, data, args, args.out / "approx")
        console.print(
            f"held-out attention KL {approx['heldout_attention_kl_before']:.4f} (init) -> "
            f"{approx['heldout_attention_kl']:.4f}"
        )
    with phases(
        "calibrate", f"keep ratio for mean retention {args.target:g} on {args.calib_samples} train inputs"
    ):
        calib = choose_keep_ratio(net, ApproxNet.load(approx["dir"], net.config).eval(), data, args)
        console.print(f"r = {calib['keep_ratio']:g}: retention {calib['calib_retention']:.3f}")
    with phases("export", f"export STTABT (r={calib['keep_ratio']:g}) and dense: ONNX fp32 + INT8"):
        exports = export_models(args, Path(approx["dir"]), calib["keep_ratio"], warn)
        files = onnx_files(args)
    preds = {name: load(path, threads=args.torch_threads) for name, path in files.items()}
    held = data.eval_examples(args.eval_examples)
    with phases("verify", f"ONNX vs PyTorch parity on {args.verify_examples} held-out inputs"):
        parity = check_parity(preds, net, held[: args.verify_examples], args.task)
        print_parity(console, parity)
    with phases(
        "accuracy", f"accuracy, retention, occupancy of 4 files on {len(held)} held-out inputs (runtime)"
    ):
        parts = model_parts(net)
        first = preds["dense_fp32"]
        pad_to = None if first.text is None else longest_length(held, first.text, first.max_length)
        n_tok = 0 if first.image is None else (net.config.image_size // net.config.patch_size) ** 2
        evals = onnx_accuracy(preds, held, n_tok + parts.num_prefix_tokens, parts.num_prefix_tokens, pad_to)
        flops = analytic_flops(net, preds, held, args.flops_examples or len(held))
    if args.seq_len is None:  # text: the mean held-out length; images: their fixed token count
        args.seq_len = round(evals["dense_fp32"]["mean_length"])
    lengths = [args.seq_len] + ([args.long_seq_len] if first.text is not None and args.long_seq_len else [])
    bench_input = (
        "" if first.text is None else ", synthetic text of " + " and ".join(map(str, lengths)) + " tokens"
    )
    with phases("bench", f"latency, batch 1, {args.threads} threads, block {args.block}{bench_input}"):
        lat = latency(files, args, lengths)
        for pair, r in lat.items():
            console.print(
                f"{pair}: p50 {r['a']['p50_ms']:.2f} vs {r['b']['p50_ms']:.2f} ms, ratio {r['ratio_p50']:.3f}"
                f" (p10 {r['ratio_p10']:.3f}, p90 {r['ratio_p90']:.3f})"
            )
    with phases("report", "table, summary.json, summary.png"):
        summary: dict[str, Any] = {
            "task": args.task,
            "title": TASKS[args.task]["title"],
            "eval_name": TASKS[args.task]["eval_name"],
            "eval_examples": len(held),
            "verify_examples": args.verify_examples,
            "threads": args.threads,
            "torch_threads": args.torch_threads,
            "bench_input": bench_input,
            "seq_len": args.seq_len,
            **calib,
            "approx_kl_before": approx["heldout_attention_kl_before"],
            "approx_kl_after": approx["heldout_attention_kl"],
            "bench_lengths": lengths,
            "models": model_rows(evals, flops, parity, lat, files, lengths),
            "all_parity_passed": all(r["passed"] for r in parity.values()),
        }
        plot(summary, args.out / "summary.png")
    summary["wall_time_s"] = round(time.perf_counter() - phases.t0, 1)
    result = {
        "benchmark": "quickstart",
        "budget": "smoke" if args.smoke else "full",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "accuracy_backend": "ONNX Runtime through sttabt_edge.runtime (the exported files); FLOPs analytic from a "
        "PyTorch eval (INT8 files: their fp32 twin's count)",
        "summary": summary,
        "phases_s": phases.times,
        "wall_time_s": summary["wall_time_s"],
        "approx": approx,
        "export": exports,
        "parity": parity,
        "eval": evals,
        "flops": flops,
        "bench": lat,
        "env": environment(),
        "load_average": os.getloadavg(),
    }
    write_json(args.out / "summary.json", result)
    console.print(summary_table(summary, phases.times))
    console.print(
        f"wrote {args.out / 'summary.json'}, {args.out / 'summary.png'}; commit {result['env']['commit']}; "
        f"total wall time {result['wall_time_s']:.0f} s; load average {os.getloadavg()[0]:.1f}"
    )
    if not summary["all_parity_passed"]:
        console.print("[red]parity check FAILED; see summary.json")
    return result


if __name__ == "__main__":
    quiet_third_party()
    sys.exit(0 if main()["summary"]["all_parity_passed"] else 1)
