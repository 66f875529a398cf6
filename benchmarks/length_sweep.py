"""Where token pruning pays on this CPU: batch-1 latency of exported text models against input length.

At batch 1 a short input costs little compute; the time goes to reading the weights and to
per-node dispatch, which pruning cannot cut. An STTABT graph adds its ApproxNet and the
back-tracking on top, so below some length it is slower than the dense file, and above it
faster. This sweep measures that crossing for given exports: each named pair (``a:b``) is timed
with ``runtime.bench.bench(a, vs=b)`` (worker processes, block alternation) at every
``--lengths`` value, on synthetic text of that many tokens. Top-k STTABT keeps a fixed fraction
per layer, so its retention does not depend on the text; a threshold (concrete) export's does,
so time such a file on real inputs (``sttabt-edge bench --inputs``) instead.

    sttabt-edge export --model M --out w/dense.onnx --method dense --quantize int8 --batch 1 --calib DEV.tsv
    sttabt-edge export --model M --out w/sttabt.onnx --approx untrained --keep-ratio 0.3 --quantize int8 \\
        --batch 1 --calib DEV.tsv
    python benchmarks/length_sweep.py --file dense_int8=w/dense.onnx dense_fp32=w/dense.fp32.onnx \\
        sttabt_int8=w/sttabt.onnx sttabt_fp32=w/sttabt.fp32.onnx \\
        --pairs sttabt_int8:dense_int8 sttabt_fp32:dense_fp32 dense_int8:dense_fp32

Writes ``--out`` (JSON, with the commit) and a PNG beside it: p50 latency against length for
every file, and each pair's median per-round ratio with the break-even line.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from common import environment, quiet_third_party, write_json
from rich.console import Console
from rich.table import Table

from sttabt_edge.runtime.bench import bench


def _named(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).is_file():
            raise SystemExit(f"error: --file takes NAME=PATH with an existing file, got {item!r}")
        out[name] = Path(path)
    return out


def sweep(
    files: dict[str, Path], pairs: list[tuple[str, str]], lengths: list[int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    rows = []
    for n in lengths:
        for a, b in pairs:
            r = bench(
                files[a],
                vs=files[b],
                threads=args.threads,
                runs=args.runs,
                warmup=3,
                seq_len=n,
                block=args.block,
                progress=False,
            )
            rows.append(
                {
                    "length": n,
                    "a": a,
                    "b": b,
                    "a_p50_ms": r.a.p50_ms,
                    "b_p50_ms": r.b.p50_ms if r.b else None,
                    "ratio_p50": r.ratio_p50,
                    "ratio_p10": r.ratio_p10,
                    "ratio_p90": r.ratio_p90,
                    "a_kept_per_layer": r.a.kept_per_layer,
                }
            )
    return rows


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    p50: dict[str, dict[int, float]] = {}
    for r in rows:  # a file in several pairs: its median over them
        for side in ("a", "b"):
            p50.setdefault(r[side], {}).setdefault(r["length"], r[f"{side}_p50_ms"])
    for name, by_n in sorted(p50.items()):
        ns = sorted(by_n)
        left.plot(ns, [by_n[n] for n in ns], marker="o", label=name)
    left.set(xlabel="input tokens", ylabel="p50 latency, ms (batch 1)", xscale="log", title="latency")
    left.legend(fontsize=8)
    for pair in dict.fromkeys((r["a"], r["b"]) for r in rows):
        sub = [r for r in rows if (r["a"], r["b"]) == pair]
        ns = [r["length"] for r in sub]
        right.plot(ns, [r["ratio_p50"] for r in sub], marker="o", label=f"{pair[0]} / {pair[1]}")
        right.fill_between(ns, [r["ratio_p10"] for r in sub], [r["ratio_p90"] for r in sub], alpha=0.15)
    right.axhline(1.0, color="k", lw=0.8, ls="--")
    right.set(xlabel="input tokens", ylabel="latency ratio (median of rounds)", xscale="log", title="ratio")
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", nargs="+", required=True, help="NAME=PATH of an exported text model")
    ap.add_argument("--pairs", nargs="+", required=True, help="A:B, timed as bench(A, vs=B)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 24, 32, 64, 128])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20, help="rounds per pair and length")
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/length_sweep.json"))
    args = ap.parse_args()
    files = _named(args.file)
    pairs = []
    for p in args.pairs:
        a, sep, b = p.partition(":")
        if not sep or a not in files or b not in files:
            raise SystemExit(f"error: --pairs takes A:B of --file names, got {p!r}")
        pairs.append((a, b))
    t0 = time.time()
    rows = sweep(files, pairs, sorted(args.lengths), args)
    wall = time.time() - t0
    table = Table(title=f"batch 1, {args.threads} threads, {args.runs} rounds of {args.block}")
    for col in ("tokens", "pair", "A p50 ms", "B p50 ms", "ratio", "p10-p90"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["length"]),
            f"{r['a']} / {r['b']}",
            f"{r['a_p50_ms']:.2f}",
            f"{r['b_p50_ms']:.2f}",
            f"{r['ratio_p50']:.3f}",
            f"{r['ratio_p10']:.2f}-{r['ratio_p90']:.2f}",
        )
    Console().print(table)
    payload = {
        **environment(),
        "benchmark": "length_sweep",
        "files": {k: str(v) for k, v in files.items()},
        "threads": args.threads,
        "runs": args.runs,
        "block": args.block,
        "rows": rows,
        "wall_s": wall,
    }
    write_json(args.out, payload)
    plot(rows, args.out.with_suffix(".png"), f"batch-1 latency vs input length ({args.threads} threads)")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} ({wall / 60:.1f} min)")


if __name__ == "__main__":
    quiet_third_party()
    main()
