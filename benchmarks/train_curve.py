"""Held-out accuracy against training minutes, from the metrics.jsonl of finished or running training dirs.

A budget's effect is visible only on the curve: each ``train concrete|baseline`` run logs its held-out
evaluation every ``eval_every`` steps (real removal, the 500 held-out images for DeiT) and its step
time; this script turns them into (minutes, accuracy, retention) points, one line per run, and marks
the dense model's accuracy. Minutes are the sum of logged step times (training only: evaluation and
checkpointing excluded), so a resumed run continues its own clock.

    python benchmarks/train_curve.py --run full@0.5=runs/deit/concrete_r0.5 --run medium@0.5=runs/deit_m/concrete_r0.5 \\
        --dense 79.0 --out benchmarks/results/train_curve_deit.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common import environment, quiet_third_party, write_json

from sttabt_edge.train.engine import METRICS_FILE

OFF_TARGET = 0.05  # an evaluation this far from the run's retention target measured another operating point


def run_target(run_dir: Path) -> float | None:
    """The run's retention target, from its latest checkpoint's fingerprint (None: not recorded)."""
    states = sorted((run_dir / "checkpoints").glob("ckpt-*/state.json"))
    if not states:
        return None
    target = json.loads(states[-1].read_text()).get("fingerprint", {}).get("target_retention")
    return None if target is None else float(target)


def curve(run_dir: Path) -> dict[str, Any]:
    """(minutes, accuracy %, retention) at each held-out evaluation of one run, plus its step cost.

    Evaluations whose retention is off the run's target (an unsnapped soft-phase evaluation of code before
    7a4677b ran at retention 1.0) are kept apart in ``off_target``: they are not points of this curve."""
    target = run_target(run_dir)
    minutes, last_step, points, off, ms_per_view, soft = 0.0, 0, [], [], [], []
    for line in (run_dir / METRICS_FILE).read_text().splitlines():
        rec = json.loads(line)
        if "eval" in rec:
            e = rec["eval"]
            point = {
                "step": rec["step"],
                "minutes": minutes,
                "accuracy": 100 * e["accuracy"],
                "retention": e.get("retention"),
                "flops_ratio": e.get("flops_ratio"),
            }
            on = target is None or e.get("retention") is None or abs(e["retention"] - target) <= OFF_TARGET
            (points if on else off).append(point)
            continue
        if "step_time" in rec:  # the mean step time of this call so far, over the steps since the last line
            minutes += (rec["step"] - last_step) * rec["step_time"] / 60
            last_step = rec["step"]
            ms_per_view.append(rec.get("ms_per_view", 0.0))
            if not rec.get("hard", 1.0):
                soft.append({"step": rec["step"], "retention": rec["retention"], "lam": rec.get("lam")})
    return {
        "run": str(run_dir),
        "target_retention": target,
        "points": points,
        "off_target": off,
        "train_minutes": minutes,
        "steps": last_step,
        "ms_per_view_median": sorted(ms_per_view)[len(ms_per_view) // 2] if ms_per_view else None,
        "soft_retention": soft,
    }


def add_start(run: dict[str, Any], init: dict[str, Any]) -> None:
    """Prepend minute 0: the calibrated start of ``init`` (a ``benchmarks/init_schedule_deit.py`` JSON of
    the same ApproxNet) at the run's target, ``constant`` schedule (the recipe's), before any step."""
    target = run["target_retention"]
    if target is None:
        return
    row = next(
        (r for r in init["rows"] if r["schedule"] == "constant" and abs(r["target"] - target) < 1e-6), None
    )
    if row is not None:
        run["points"].insert(
            0,
            {
                "step": 0,
                "minutes": 0.0,
                "accuracy": row["accuracy"],
                "retention": row["retention"],
                "flops_ratio": row.get("flops_ratio"),
                "source": init.get("commit"),
            },
        )


def plot(runs: dict[str, dict[str, Any]], dense: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, ret) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in runs.items():
        xs = [p["minutes"] for p in r["points"]]
        acc.plot(xs, [p["accuracy"] for p in r["points"]], "o-", label=name)
        ret.plot(
            [s["step"] for s in r["soft_retention"]],
            [s["retention"] for s in r["soft_retention"]],
            label=name,
        )
    if dense is not None:
        acc.axhline(dense, color="k", ls="--", lw=1, label=f"dense {dense:.1f}")
        acc.axhline(dense - 1.5, color="grey", ls=":", lw=1, label="dense − 1.5")
    acc.set(
        xlabel="training minutes (one thread)", ylabel="held-out top-1 %", title="accuracy against minutes"
    )
    ret.set(
        xlabel="step",
        ylabel="soft-phase retention (training views)",
        title="retention through the soft phase",
    )
    acc.legend(fontsize=8)
    ret.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="NAME=DIR of a training run")
    ap.add_argument("--dense", type=float, default=None, help="the dense model's held-out top-1 %%")
    ap.add_argument(
        "--init",
        type=Path,
        default=None,
        help="init_schedule_deit.py JSON of the runs' ApproxNet: its calibrated start is minute 0",
    )
    ap.add_argument(
        "--init-for",
        nargs="+",
        default=None,
        help="the runs (NAMEs) whose ApproxNet --init measured (default: every run)",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/train_curve.json"))
    args = ap.parse_args()
    init = json.loads(args.init.read_text()) if args.init else None
    names = [spec.partition("=")[0] for spec in args.run]
    if args.init_for is not None and (init is None or not set(args.init_for) <= set(names)):
        ap.error(
            f"--init-for needs --init and names among the runs ({', '.join(names)}), got {args.init_for}"
        )
    runs = {}
    for spec in args.run:
        name, sep, d = spec.partition("=")
        if not sep or not (Path(d) / METRICS_FILE).is_file():
            ap.error(f"--run takes NAME=DIR with a {METRICS_FILE}, got {spec!r}")
        runs[name] = curve(Path(d))
        if init is not None and (args.init_for is None or name in args.init_for):
            add_start(runs[name], init)  # another ApproxNet, or a baseline, starts elsewhere
    for name, r in runs.items():
        last = r["points"][-1] if r["points"] else {}
        print(
            f"{name}: {r['steps']} steps, {r['train_minutes']:.1f} min, {r['ms_per_view_median']} ms/view; "
            f"last held-out {last.get('accuracy', float('nan')):.1f}% at retention {last.get('retention')}"
        )
    write_json(args.out, {"dense_accuracy": args.dense, "runs": runs, **environment()})
    plot(runs, args.dense, args.out.with_suffix(".png"))


if __name__ == "__main__":
    quiet_third_party()
    main()
