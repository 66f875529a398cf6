"""Markdown tables for README and docs/results.md, straight from the results JSON (no number typed by hand).

python benchmarks/tables.py core benchmarks/results/core_deit.json [benchmarks/results/core_deit_flops.json]
python benchmarks/tables.py core-sst2 benchmarks/results/core_sst2.json
python benchmarks/tables.py sweep benchmarks/results/concrete_variants_sst2_*.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _acc(metrics: dict) -> str:
    return f"{100 * metrics['accuracy']:.1f}"


def core_table(paths: list[Path], latency: bool = True) -> str:
    """core_deit.json (and the --match flops one): method, target, top-1, retention, occupancy, FLOPs, latency
    (``latency=False`` leaves out the PyTorch latency column, e.g. for a run on a loaded machine)."""
    rows = [
        "| match | method | top-1 % | retention | occupancy | FLOPs × | keep ratio |"
        + (" PyTorch latency × |" if latency else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if latency else ""),
    ]
    for path in paths:
        d = json.loads(path.read_text())
        for r in d["results"]:
            knob = r["extra"].get("knob")
            knob_s = "" if knob is None or knob != knob else f"{knob:.4f}"
            lat = f" {r['extra'].get('latency_ratio_vs_ref', float('nan')):.2f} |" if latency else ""
            rows.append(
                f"| {d.get('match', 'retention')} | {r['method']} | {_acc(r['metrics'])} | {r['retention']:.3f} | "
                f"{r['occupancy']:.3f} | {r['flops_ratio']:.3f} | {knob_s} |{lat}"
            )
        rows.append(
            f"\n`{d['benchmark']}` at `{d['env'].get('commit', '?')}`, {d['images']} images, "
            f"{d['wall_s'] / 60:.1f} min"
        )
    return "\n".join(rows)


def core_sst2_table(path: Path) -> str:
    d = json.loads(path.read_text())
    rows = [
        f"| method | accuracy % | retention | occupancy (T = {d['occupancy_length']}) | FLOPs × | keep ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["results"]:
        rows.append(
            f"| {r['method']} | {_acc(r['metrics'])} | {r['retention']:.3f} | {r['occupancy']:.3f} | "
            f"{r['flops_ratio']:.3f} | {'' if r['keep_ratio'] is None else r['keep_ratio']} |"
        )
    rows.append(f"\n`core_sst2` at `{d['env'].get('commit', '?')}`, {d['wall_s'] / 60:.1f} min")
    return "\n".join(rows)


def sweep_table(paths: list[Path]) -> str:
    """train_sst2-style sweep JSONs: one row per point, with the run's concrete variant and init schedule."""
    rows = [
        "| variant | init | method | target | accuracy % | retention | per-layer retention | occupancy | FLOPs × |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        d = json.loads(path.read_text())
        for p in d["points"]:
            per = " ".join(f"{v:.2f}" for v in p.get("retention_per_layer", []))
            occ = p.get("occupancy")
            rows.append(
                f"| {d.get('concrete', 'ste')} | {d.get('init_schedule', '')} | {p['method']} | "
                f"{p['target']:g} | {_acc(p['metrics'])} | {p['retention']:.3f} | {per} | "
                f"{'' if occ is None else f'{occ:.3f}'} | {p['flops_ratio']:.3f} |"
            )
        rows.append(
            f"| | | dense | | {_acc(d['dense']['metrics'])} | 1.000 | | | 1.000 |"
            if "dense" in d and "metrics" in d["dense"]
            else ""
        )
        rows.append(
            f"\n`{path.name}` at `{d['env'].get('commit', '?')}`: {d.get('sparse_steps')} steps per point, "
            f"{d['wall_time_s'] / 60:.1f} min\n"
        )
    return "\n".join(r for r in rows if r != "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["core", "core-sst2", "sweep"])
    ap.add_argument("paths", type=Path, nargs="+")
    ap.add_argument("--no-latency", action="store_true", help="core: leave out the PyTorch latency column")
    args = ap.parse_args()
    if args.kind == "core":
        print(core_table(args.paths, latency=not args.no_latency))
    elif args.kind == "core-sst2":
        print(core_sst2_table(args.paths[0]))
    else:
        print(sweep_table(args.paths))


if __name__ == "__main__":
    main()
