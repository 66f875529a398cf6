"""The command line shared by the accuracy-vs-retention drivers (train_sst2.py, train_deit.py).

A driver supplies its budgets and a ``plan_for(budget, methods)``; this module parses the
common options, runs :func:`sttabt_edge.train.sweep.run_sweep`, writes the JSON (after every
point, so an interrupted sweep keeps what it measured) and the PNG, and prints the table,
the skipped (unreachable) targets, the ApproxNet's held-out KL, the equivalent
``sttabt-edge train`` commands and the wall time.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import environment, write_json
from rich.console import Console
from rich.table import Table

from sttabt_edge.train.sweep import SweepPlan, plot_curves, run_sweep, summary_rows


@dataclass
class Driver:
    name: str  # "train_sst2": results file stem and JSON "benchmark"
    doc: str
    model: Path
    data: Path
    budgets: Mapping[str, Mapping[str, Any]]
    plan_for: Callable[[str, list[str] | None], SweepPlan]
    title: str  # plot title; "{budget}" is filled in
    eval_name: str  # table title: "SST-2 dev", "imagenet-sample held-out half"
    unit: str  # what is counted in the table title: "sentences", "images"
    calib_help: str  # what --calib-on means for this data
    header: Mapping[str, Any] = ()  # extra JSON header entries


def main(d: Driver, argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=d.doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=d.model)
    ap.add_argument("--data", type=Path, default=d.data)
    ap.add_argument("--budget", choices=sorted(d.budgets), default="small")
    ap.add_argument("--methods", nargs="+", default=None, help="subset of concrete ltp topk tome sttabt-topk")
    ap.add_argument("--work", type=Path, default=Path(f"/tmp/sttabt-{d.name}"), help="runs and checkpoints")
    ap.add_argument(
        "--out", type=Path, default=None, help=f"default benchmarks/results/{d.name}_<budget>.json"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-on", choices=["train", "eval"], default="train", help=d.calib_help)
    ap.add_argument(
        "--approx", type=Path, default=None, help="reuse this ApproxNet dir instead of distilling one"
    )
    ap.add_argument(
        "--targets", type=float, nargs="+", default=None, help="override the budget's retention targets"
    )
    ap.add_argument(
        "--sparse-steps", type=int, default=None, help="override the budget's steps per trained point"
    )
    ap.add_argument(
        "--init-schedule",
        choices=["constant", "union", "shared"],
        default="constant",
        help="concrete: initial keep schedule (SparseTrainConfig.init_schedule)",
    )
    ap.add_argument(
        "--concrete",
        choices=["ste", "official"],
        default="ste",
        help="concrete variant (SparseTrainConfig.sttabt.concrete): ours (straight-through) or the official one",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console()
    out = args.out or Path(f"benchmarks/results/{d.name}_{args.budget}.json")
    plan = d.plan_for(args.budget, args.methods)
    plan.calib_on_eval = args.calib_on == "eval"
    plan.approx_dir = args.approx
    if args.targets:
        plan.targets = args.targets
    sttabt = plan.scfg.sttabt.replace(concrete=args.concrete)
    plan.scfg = plan.scfg.replace(init_schedule=args.init_schedule, sttabt=sttabt)
    if args.sparse_steps:
        plan.sparse_cfg = plan.sparse_cfg.replace(
            optim=plan.sparse_cfg.optim.replace(steps=args.sparse_steps)
        )
    work = args.work / args.budget / time.strftime("%Y%m%d-%H%M%S")
    header = {
        "benchmark": d.name,
        "budget": args.budget,
        "model": str(args.model),
        "data": str(args.data),
        "calib_on": args.calib_on,
        "targets": plan.targets,
        "sparse_steps": plan.sparse_cfg.optim.steps,
        "init_schedule": plan.scfg.init_schedule,
        "concrete": plan.scfg.sttabt.concrete,
        **dict(d.header),
        "env": environment(),
    }

    def save(results: dict) -> None:
        write_json(out, {**header, **results})

    results = run_sweep(args.model, args.data, work, plan, log=console.print, save=save)
    save(results)
    plot_curves(results, out.with_suffix(".png"), d.title.format(budget=args.budget))
    table = Table(title=f"{d.eval_name}, {results['num_eval']} {d.unit}")
    for col in ("method", "retention", "accuracy %", "FLOPs ratio", "s/step"):
        table.add_column(col, justify="right")
    for row in summary_rows(results):
        table.add_row(*row)
    console.print(table)
    for u in results.get("unreachable", []):
        console.print(f"[yellow]{u['method']} @{u['target']:g} skipped[/yellow]: {u['reason']}")
    console.print(
        f"ApproxNet held-out attention KL: {results['approx']['heldout_attention_kl_before']:.4f} (init) "
        f"-> {results['approx']['heldout_attention_kl']:.4f}"
    )
    console.print("equivalent commands:\n  " + "\n  ".join(results["commands"]))
    console.print(f"wall time {results['wall_time_s'] / 60:.1f} min -> {out}")
