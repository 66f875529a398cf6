"""Batch-1 latency of several exported files, round-robin in one process, at several thread settings.

The plane (``plane.py``) times each file against dense in its own pair of worker processes; on a
2-core machine the pairs can drift apart between files. Here every file runs once per round, in
turn (A B C ... A B C ...), on the same real inputs, so a load change hits every file of a round
alike; each file's ratio is the median of its per-round ratios to ``--ref``. One session per file
and setting, ``runtime.sessions.session_options`` (spinning, when on, stops when a run returns).

    python benchmarks/latency_rr.py --file dense_int8=w/dense.onnx concrete=w/concrete_0.5.onnx \\
        --ref dense_int8 --inputs w/eval_inputs.txt --threads 2 1 --spinning on off --out lat.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from common import environment, interleaved_latency, quiet_third_party, write_json
from rich.console import Console
from rich.table import Table

from sttabt_edge.runtime.bench_inputs import read_inputs
from sttabt_edge.runtime.predictor import load


def time_setting(
    files: dict[str, Path], inputs: Path, ref: str, threads: int, spinning: bool, runs: int, limit: int
) -> dict[str, dict[str, float]]:
    preds = {k: load(p, threads=threads, spinning=spinning) for k, p in files.items()}
    feeds = {k: read_inputs(p, inputs, 1, limit).feeds for k, p in preds.items()}
    step = {k: 0 for k in preds}

    def runner(name: str):
        def run() -> Any:
            f = feeds[name][step[name] % len(feeds[name])]  # each file walks the same input sequence
            step[name] += 1
            return preds[name].run(f)

        return run

    order = [ref, *(k for k in preds if k != ref)]  # interleaved_latency's reference is its first
    lat = interleaved_latency({k: runner(k) for k in order}, runs=runs, warmup=5)
    return {k: {"p50_ms": lat[k]["median_ms"], "x_ref": lat[k]["ratio_vs_ref"]} for k in preds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", nargs="+", required=True, help="NAME=PATH of each exported file")
    ap.add_argument("--ref", required=True, help="the NAME every ratio is taken against")
    ap.add_argument("--inputs", type=Path, required=True, help="inputs file (plane.py's eval_inputs.txt)")
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--spinning", choices=["off", "on"], nargs="+", default=["off"])
    ap.add_argument("--runs", type=int, default=100, help="rounds per setting")
    ap.add_argument("--limit", type=int, default=100, help="real inputs cycled through")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    files = {}
    for spec in args.file:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"--file takes NAME=PATH of an existing file, got {spec!r}")
        files[name] = Path(path)
    if args.ref not in files:
        ap.error(f"--ref {args.ref!r} is none of the --file names ({', '.join(files)})")
    if min(args.threads) < 1 or args.runs < 1 or args.limit < 1:
        ap.error("--threads, --runs and --limit must be >= 1")
    t0 = time.time()
    settings = [(t, s == "on") for t in args.threads for s in args.spinning]
    results = []
    for threads, spinning in settings:
        timed = time_setting(files, args.inputs, args.ref, threads, spinning, args.runs, args.limit)
        results.append({"threads": threads, "spinning": spinning, "files": timed})
    table = Table(title=f"× {args.ref}, median of per-round ratios ({args.runs} rounds, batch 1)")
    table.add_column("file")
    for r in results:
        table.add_column(f"{r['threads']}t spin {'on' if r['spinning'] else 'off'}", justify="right")
    for name in files:
        table.add_row(name, *(f"{r['files'][name]['x_ref']:.3f}" for r in results))
    Console().print(table)
    payload = {
        **environment(),
        "benchmark": "latency_rr",
        "ref": args.ref,
        "inputs": str(args.inputs),
        "runs": args.runs,
        "limit": args.limit,
        "files": {k: str(v) for k, v in files.items()},
        "settings": results,
        "wall_s": time.time() - t0,
    }
    write_json(args.out, payload)
    print(f"wrote {args.out} ({payload['wall_s']:.0f} s)")


if __name__ == "__main__":
    quiet_third_party()
    main()
