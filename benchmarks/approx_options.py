"""MiniLM-SST2: accuracy side of the ApproxNet width / head options (cost side: approx_cost.py).

For each option (width divisor ``factor``, head count ``heads``) this distils an ApproxNet on
SST-2 train sentences (labels unused) with one shared step budget (train_sst2.py 'small' by
default), then reports on SST-2 dev:

* held-out attention KL on the head-MEAN map (teacher's mean over its 12 heads vs the
  ApproxNet's mean over its heads): the quantity back-tracking consumes, comparable across
  head counts; and the per-head KL train_approx reports (ApproxNet head j vs the mean of
  its group of teacher heads: not comparable across head counts);
* accuracy, retention and FLOPs ratio of STTABT top-k (constant keep ratio, real token
  removal) with that ApproxNet at each keep ratio, next to dense and the oracle
  (the model's own attention, approx=None) at the same ratios;
* the ApproxNet's analytic FLOPs / dense FLOPs on dev (matmuls only: the head count barely
  moves them, its saving is in softmax / memory traffic, i.e. latency: approx_cost.py's
  measured MiniLM ratios are joined from ``--cost`` when that file exists), and the
  distillation wall time.

Each option is distilled with every seed in ``--seeds`` (data order); tables and plot show
the seed mean ± sample std. Both inits' held-out KL before training are recorded too
(whether interpolate helps on text). Writes benchmarks/results/approx_options_sst2.json and .png.

    python benchmarks/approx_options.py --threads 1   # 3 seeds: ~30 min on 2 loaded cores
    python benchmarks/approx_options.py --steps 4 --max-eval 64 --seeds 0 --out /tmp/ao_smoke.json  # ~1 min
    python benchmarks/approx_options.py --plot-only   # redraw the PNG and table from the JSON
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from approx_options_report import plot, summary
from common import SHARED, environment, quiet_third_party, write_json
from rich.console import Console
from train_sst2 import BUDGETS

from sttabt_edge import compat
from sttabt_edge.data import Example, model_class_names
from sttabt_edge.evaluate import evaluate
from sttabt_edge.method.approxnet import ApproxNet, build_approxnet, teacher_targets
from sttabt_edge.method.distill import attention_kl
from sttabt_edge.method.flops import dense_flops
from sttabt_edge.models.loading import load_model
from sttabt_edge.reducers import DenseReducer, SttabtReducer
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.sparse_model import SparseClassifier
from sttabt_edge.train.approx import REPORT_FILE, heldout_attention_kl, train_approx
from sttabt_edge.train.config import ApproxConfig, TrainConfig
from sttabt_edge.train.data import Batch, TrainData, prepare_data
from sttabt_edge.train.train_config import DataSettings, EvalSettings, OptimSettings, RunSettings

OPTIONS = ((4, 12), (4, 4), (4, 1), (8, 12), (8, 1))
SMALL = BUDGETS["small"]  # the train_sst2.py 'small' ApproxNet budget: 150 steps, batch 16 (lr 5e-4 there)
MAX_LENGTH = 64  # as train_sst2.py (the teacher was fine-tuned at 64)


def as_tensors(batch: Batch) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in batch[0].items()}


@torch.no_grad()
def mean_map_kl(teacher: torch.nn.Module, approx: ApproxNet, batches: Sequence[Batch]) -> dict[str, Any]:
    """KL(teacher head-mean map || ApproxNet head-mean map) per query row, over held-out batches.

    Returns the mean over layers and real rows (rows weighted as in ``heldout_attention_kl``)
    and the per-layer values. All query rows count, also in the top layer, where back-tracking
    reads only [CLS]'s row.
    """
    parts = compat.model_parts(teacher)
    was = approx.training
    approx.eval()
    per_layer: torch.Tensor | None = None
    rows = 0.0
    for batch in batches:
        inputs = as_tensors(batch)
        tt = teacher_targets(parts, inputs)
        t_mean = tt.attentions.mean(dim=2, keepdim=True)  # (L, B, 1, N, N)
        a_mean = approx(inputs).attentions.mean(dim=2, keepdim=True)
        n = float(tt.pad_mask.sum())
        layers = torch.stack(
            [attention_kl(t_mean[i : i + 1], a_mean[i : i + 1], tt.pad_mask) for i in range(t_mean.shape[0])]
        )
        per_layer = layers * n if per_layer is None else per_layer + layers * n
        rows += n
    approx.train(was)
    if per_layer is None or rows == 0:
        return {"mean": float("nan"), "per_layer": []}
    vals = (per_layer / rows).tolist()
    return {"mean": float(sum(vals) / len(vals)), "per_layer": vals}


@torch.no_grad()
def approx_flops_ratio(teacher: torch.nn.Module, approx: ApproxNet, batches: Sequence[Batch]) -> float:
    """The ApproxNet's analytic FLOPs (what the reducer adds) / dense FLOPs, summed over ``batches``."""
    parts = compat.model_parts(teacher)
    a = d = 0.0
    for batch in batches:
        pad = as_tensors(batch)["attention_mask"].bool()
        a += float(approx.flops(pad).sum())
        d += float(dense_flops(parts, pad.sum(1)).sum())
    return a / d


def run_eval(
    model: torch.nn.Module, reducer: Reducer, data: TrainData, examples: list[Example], name: str
) -> dict[str, Any]:
    """The project's evaluate(), trimmed to what the JSON keeps."""
    res = evaluate(
        SparseClassifier(model, reducer),
        examples,
        text=data.text,
        batch_size=64,
        task=data.task,
        name=name,
        max_length=MAX_LENGTH,
    )
    return {
        "accuracy": res.metrics["accuracy"],
        "retention": res.retention,
        "retention_per_layer": res.retention_per_layer,
        "flops_ratio": res.flops_ratio,
        "gflops": res.gflops,
    }


def init_kls(
    teacher: torch.nn.Module, held: Sequence[Batch], factor: int, heads: int
) -> dict[str, dict[str, float]]:
    """Per-head and mean-map held-out KL of both inits before any training."""
    out = {}
    for init in ("interpolate", "random"):
        net = build_approxnet(teacher, factor, init, heads=heads).eval()
        out[init] = {
            "per_head_kl": heldout_attention_kl(teacher, net, held),
            "mean_map_kl": mean_map_kl(teacher, net, held)["mean"],
        }
    return out


def _mean_std(vals: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def aggregate(rows: Sequence[dict[str, Any]], keep_ratios: Sequence[float]) -> dict[str, Any]:
    """One option's seeds -> the same keys as a row, averaged, plus ``<key>_std`` (sample std)."""
    out: dict[str, Any] = {
        "factor": rows[0]["factor"],
        "heads": rows[0]["heads"],
        "seeds": [r["seed"] for r in rows],
        "approx_params": rows[0]["approx_params"],
        "sttabt": {},
    }
    for key in ("approx_flops_ratio", "mean_map_kl", "per_head_kl", "distill_seconds"):
        out[key], out[f"{key}_std"] = _mean_std([r[key] for r in rows])
    for ratio in keep_ratios:
        evs = [r["sttabt"][f"{ratio:g}"] for r in rows]
        ev: dict[str, float] = {}
        for key in ("accuracy", "retention", "flops_ratio"):
            ev[key], ev[f"{key}_std"] = _mean_std([e[key] for e in evs])
        out["sttabt"][f"{ratio:g}"] = ev
    return out


def measured_cost(path: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """(factor, heads) -> approx_cost.py's MiniLM-SST2 (128 tokens) stage ratios to dense, if ``path`` exists."""
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text()).get("rows", [])
    return {
        (int(r["factor"]), int(r["heads"])): {
            "source": str(path),
            "tokens": r.get("tokens"),
            "mask_cost_ratio": r.get("mask_cost_ratio"),
            "ratio_to_dense": r.get("ratio_to_dense"),
        }
        for r in rows
        if r.get("case") == "minilm-sst2-128"
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=SHARED / "models" / "minilm-l6-sst2")
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "glue" / "SST-2")
    ap.add_argument(
        "--options", nargs="+", default=[f"{f}x{h}" for f, h in OPTIONS], help="FACTORxHEADS, e.g. 4x12 8x1"
    )
    ap.add_argument("--steps", type=int, default=SMALL["approx_steps"], help="distillation steps per option")
    ap.add_argument("--batch-size", type=int, default=SMALL["batch"])
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--init", choices=["interpolate", "random"], default="interpolate")
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="distillation seeds (data order) per option; tables and plot show the mean",
    )
    ap.add_argument("--keep-ratios", type=float, nargs="+", default=[0.5, 0.3])
    ap.add_argument(
        "--held-out", type=int, default=256, help="dev sentences for the attention KLs (as train_sst2)"
    )
    ap.add_argument("--max-eval", type=int, default=0, help="dev sentences evaluated; 0 = all 872")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sttabt-approx-options"), help="ApproxNet dirs")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/approx_options_sst2.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--cost",
        type=Path,
        default=Path("benchmarks/results/approx_cost.json"),
        help="approx_cost.py output to join (its minilm-sst2-128 rows), when the file exists",
    )
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. why the budget was cut)")
    ap.add_argument(
        "--plot-only", action="store_true", help="redraw the plot and table from --out, run nothing"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    if not console.is_terminal:  # logs to a file: room for the summary table
        console = Console(width=150)
    if args.plot_only:
        saved = json.loads(args.out.read_text())
        plot(saved, args.out.with_suffix(".png"))
        console.print(summary(saved))
        return
    t_start = time.perf_counter()
    options = [tuple(int(v) for v in o.lower().split("x")) for o in args.options]
    work = args.work / time.strftime("%Y%m%d-%H%M%S")

    teacher = load_model(args.model).eval()
    data = prepare_data(args.data, teacher, args.model, class_names=model_class_names(args.model))
    unlabeled = dataclasses.replace(data, train=[Example(e.inputs, None) for e in data.train])
    examples = data.eval_examples(args.max_eval)
    held = data.eval_batches(64, args.held_out, MAX_LENGTH)
    eval_batches = data.eval_batches(64, args.max_eval, MAX_LENGTH)
    cfg = TrainConfig(
        optim=OptimSettings(lr=args.lr, steps=args.steps, warmup=0.05, batch_size=args.batch_size),
        data=DataSettings(max_length=MAX_LENGTH),
        eval=EvalSettings(batch_size=64, max_samples=args.held_out),
        run=RunSettings(log_every=10, progress=True),
    )
    results: dict[str, Any] = {
        "benchmark": "approx_options_sst2",
        "command": shlex.join(["python", *sys.argv]),
        "model": str(args.model),
        "data": str(args.data),
        "env": environment(),
        "note": args.note,
        "train": {**cfg.to_dict(), "seed": args.seeds, "init": args.init, "num_train": len(data.train)},
        "held_out_kl_sentences": sum(len(b[0]["input_ids"]) for b in held),
        "num_eval": len(examples),
        "keep_ratios": args.keep_ratios,
        "reducer": "SttabtReducer(approx, keep_ratio=r): top-k back-tracking, the same ratio at every layer, "
        "head mean, p=0.1; real token removal",
        "kl_definitions": {
            "mean_map_kl": "KL(teacher mean over its heads || ApproxNet mean over its heads) per query row, "
            "mean over real rows then layers, on the first held_out_kl_sentences dev sentences",
            "per_head_kl": "train_approx's heldout_attention_kl: ApproxNet head j vs the mean of its group of "
            "teacher heads, mean over heads; a different target per head count, so not comparable across them",
        },
        "rows": [],  # one per (option, seed)
        "options": [],  # per option: means and standard deviations over the seeds
    }
    cost = measured_cost(args.cost)

    def save() -> None:
        results["wall_time_s"] = time.perf_counter() - t_start
        write_json(args.out, results)

    def log_eval(name: str, ev: dict[str, Any]) -> None:
        console.print(
            f"{name}: acc {100 * ev['accuracy']:.2f}% retention {ev['retention']:.3f} "
            f"FLOPs x{ev['flops_ratio']:.3f}"
        )

    results["dense"] = run_eval(teacher, DenseReducer(), data, examples, "dense")
    log_eval("dense", results["dense"])
    results["oracle"] = {}
    for r in args.keep_ratios:
        results["oracle"][f"{r:g}"] = ev = run_eval(
            teacher, SttabtReducer(None, keep_ratio=r), data, examples, f"oracle {r:g}"
        )
        log_eval(f"oracle keep {r:g}", ev)
    save()

    for factor, heads in options:
        tag = f"/{factor} h{heads}"
        before = init_kls(teacher, held, factor, heads)
        console.print(
            f"[bold]{tag}[/bold] init KL per-head / mean-map: "
            + ", ".join(f"{k} {v['per_head_kl']:.4f} / {v['mean_map_kl']:.4f}" for k, v in before.items())
        )
        rows = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            out_dir = work / f"approx-{factor}x{heads}-s{seed}"
            acfg = ApproxConfig(factor=factor, init=args.init, heads=heads)
            approx = train_approx(
                teacher,
                unlabeled,
                cfg=cfg.replace(optim=cfg.optim.replace(seed=seed)),
                out=out_dir,
                acfg=acfg,
            )
            seconds = time.perf_counter() - t0
            report = json.loads((out_dir / REPORT_FILE).read_text())
            mm = mean_map_kl(teacher, approx, held)
            row: dict[str, Any] = {
                "factor": factor,
                "heads": heads,
                "seed": seed,
                "approx_params": sum(p.numel() for p in approx.model.parameters()),
                "approx_flops_ratio": approx_flops_ratio(teacher, approx, eval_batches),
                "mean_map_kl": mm["mean"],
                "mean_map_kl_per_layer": mm["per_layer"],
                "per_head_kl": report["heldout_attention_kl"],
                "distill_seconds": seconds,
                "report": report,
                "dir": str(out_dir),
                "sttabt": {},
            }
            console.print(
                f"{tag} seed {seed}: per-head KL {row['per_head_kl']:.4f}, mean-map KL {mm['mean']:.4f}, "
                f"approx FLOPs x{row['approx_flops_ratio']:.3f}, distilled in {seconds:.0f} s"
            )
            for r in args.keep_ratios:
                row["sttabt"][f"{r:g}"] = ev = run_eval(
                    teacher, SttabtReducer(approx, keep_ratio=r), data, examples, f"{tag} s{seed} keep {r:g}"
                )
                log_eval(f"{tag} seed {seed} keep {r:g}", ev)
            rows.append(row)
            results["rows"].append(row)
            save()
        results["options"].append(
            {
                **aggregate(rows, args.keep_ratios),
                "init_kl": before,
                "measured_cost": cost.get((factor, heads)),
            }
        )
        save()

    save()
    plot(results, args.out.with_suffix(".png"))
    console.print(summary(results))
    console.print(
        f"wall time {results['wall_time_s'] / 60:.1f} min -> {args.out} and {args.out.with_suffix('.png')}"
    )


if __name__ == "__main__":
    quiet_third_party()
    main()
