"""Choose the learning rate of a trained pruning method on held-out *training* data, never on dev.

The official STTABT recipe picks the concrete-training lr among 1e-5 × {0.5, 1, 2} on validation.
Picking on dev and then reporting dev overstates accuracy, so this carves ``compress``'s held-out
split out of the training set (``--holdout`` sentence-like examples; training sub-phrases found
inside a held-out sentence are dropped, as they carry its label), writes it as a GLUE folder
(``OUT/split/<task>/{train,dev}.tsv``), trains one run per ``--lrs`` value on the rest with the CLI's own
``train concrete`` (or ``train baseline --method ltp``), calibrating retention on the held-out
inputs (``--calib-on eval``, labels unused), and picks the lr of the best held-out accuracy.

    python benchmarks/lr_select.py --model ../shared/models/minilm-l6-sst2 --approx runs/approx_f4h1 \\
        --data ../shared/data/glue/SST-2 --target-retention 0.4 --lrs 5e-6 1e-5 2e-5 --steps 1000 \\
        --config concrete.json --out runs/lr_select_r040

Writes ``OUT/lr_select.json`` (commit, each run's held-out accuracy, retention and wall time, the
choice). Each run is resumable (``--resume`` is passed through); a finished run is read, not redone.
Selection runs may be shorter than the final run (``--steps``): the choice is then an assumption
that the ordering holds at the full budget, and the JSON says which budget chose.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import environment, quiet_third_party, write_json
from rich.console import Console
from rich.table import Table


def write_split(
    model: str, data: Path, out: Path, holdout: int, min_tokens: int, max_length: int, seed: int
) -> dict:
    """The held-out split of ``compress`` (``stages.split_data``), written as a GLUE task folder."""
    from sttabt_edge.compress.config import CompressConfig
    from sttabt_edge.compress.stages import split_data
    from sttabt_edge.models.loading import load_model
    from sttabt_edge.train.data import prepare_data

    if not Path(model).is_dir():
        raise SystemExit(f"lr_select.py: --model must be a model folder (with tokenizer.json), got {model}")
    model_dir, net = Path(model), load_model(model)
    cfg = CompressConfig.of(
        model=model,
        data=data,
        out=out,
        target_retention=1.0,  # unused: the split is all this reads from the config
        holdout=holdout,
        holdout_min_tokens=min_tokens,
        max_length=max_length,
        seed=seed,
    )
    split = split_data(cfg, prepare_data(data, net, model_dir, labeled=True, seed=seed))
    out.mkdir(parents=True, exist_ok=True)
    for name, examples in (("train.tsv", split.data.train), ("dev.tsv", split.held)):
        if not all(isinstance(e.inputs, str) for e in examples):
            raise SystemExit("lr_select.py: single-sentence text tasks only (SST-2-like)")
        rows = "".join(f"{str(e.inputs).replace(chr(9), ' ')}\t{int(e.label)}\n" for e in examples)
        (out / name).write_text("sentence\tlabel\n" + rows, encoding="utf-8")
    return {
        "train": len(split.data.train),
        "held_out": len(split.held),
        "dropped_sub_phrases": split.dropped_contained,
    }


def train_one(args: argparse.Namespace, split_dir: Path, lr: float, out: Path) -> float:
    """One CLI training run (resumable); returns its wall time in seconds (0 if it was finished)."""
    if (out / "sttabt.json").is_file():
        return 0.0
    method = ["concrete"] if args.method == "concrete" else ["baseline", "--method", args.method]
    cmd = [
        sys.executable,
        "-m",
        "sttabt_edge.cli",
        "train",
        *method,
        "--model",
        args.model,
        "--data",
        str(split_dir),
    ]
    cmd += ["--out", str(out), "--target-retention", str(args.target_retention), "--calib-on", "eval"]
    cmd += ["--lr", str(lr), "--steps", str(args.steps), "--resume"]
    if args.approx and args.method == "concrete":
        cmd += ["--approx", args.approx, "--hard-frac", str(args.hard_frac)]
    if args.config:
        cmd += ["--config", args.config]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--approx", help="ApproxNet dir (concrete)")
    p.add_argument("--data", type=Path, required=True, help="GLUE task folder (train.tsv)")
    p.add_argument("--method", choices=["concrete", "ltp"], default="concrete")
    p.add_argument("--target-retention", type=float, required=True)
    p.add_argument("--lrs", type=float, nargs="+", default=[5e-6, 1e-5, 2e-5])
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per selection run")
    p.add_argument("--hard-frac", type=float, default=0.5)
    p.add_argument("--config", help="TrainConfig JSON (batch size, weight decay, max_length, ...)")
    p.add_argument("--holdout", type=int, default=1000)
    p.add_argument("--holdout-min-tokens", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    console = Console()
    split_dir = args.out / "split" / args.data.name  # the folder name is the GLUE task
    split = (
        json.loads((split_dir / "split.json").read_text()) if (split_dir / "split.json").is_file() else None
    )
    if split is None:
        split = write_split(
            args.model,
            args.data,
            split_dir,
            args.holdout,
            args.holdout_min_tokens,
            args.max_length,
            args.seed,
        )
        (split_dir / "split.json").write_text(json.dumps(split))
    runs = []
    for lr in args.lrs:
        run_dir = args.out / f"lr_{lr:g}"
        seconds = train_one(args, split_dir, lr, run_dir)
        meta = json.loads((run_dir / "sttabt.json").read_text())
        ev = meta["eval"] or {}
        runs.append({"lr": lr, "dir": str(run_dir), "held_out": ev, "wall_s": seconds, "steps": meta["step"]})
    best = max(runs, key=lambda r: (r["held_out"].get("accuracy", float("-inf")), -r["lr"]))
    table = Table(title=f"{args.method} lr on {split['held_out']} held-out training sentences")
    for col in ("lr", "held-out acc %", "retention", "wall s"):
        table.add_column(col, justify="right")
    for r in runs:
        ev = r["held_out"]
        mark = " *" if r is best else ""
        table.add_row(
            f"{r['lr']:g}{mark}",
            f"{100 * ev.get('accuracy', float('nan')):.2f}",
            f"{ev.get('retention', float('nan')):.3f}",
            f"{r['wall_s']:.0f}",
        )
    console.print(table)
    write_json(
        args.out / "lr_select.json",
        {
            "environment": environment(),
            "command": " ".join(sys.argv),
            "method": args.method,
            "target_retention": args.target_retention,
            "steps_per_run": args.steps,
            "split": split,
            "runs": runs,
            "chosen_lr": best["lr"],
        },
    )


if __name__ == "__main__":
    quiet_third_party()
    main()
