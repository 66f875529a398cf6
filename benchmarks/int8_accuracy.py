"""INT8 vs fp32 of exported files, on a whole GLUE dev set, through the runtime (no torch).

Feed it what `sttabt-edge export --quantize int8 --out X.onnx` wrote (X.onnx, INT8, and
X.fp32.onnx beside it); it reports both accuracies, the paired INT8 delta with its standard
error, top-1 agreement, kept-count agreement and the file sizes:

    python benchmarks/int8_accuracy.py --data ../shared/data/glue/SST-2/dev.tsv \\
        --pair dense=/tmp/int8/dense.onnx --pair sttabt=/tmp/int8/sttabt.onnx \\
        --json benchmarks/results/int8_minilm_sst2.json

``NAME=X.onnx`` compares X.onnx with X.fp32.onnx (``NAME=INT8:FP32`` names both).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from sttabt_edge.data import glue_tsv
from sttabt_edge.runtime import load


def predictions(
    path: Path, texts: list[Any], batch: int, threads: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Top-1 class and kept counts of every example (batches in file order)."""
    pred = load(path, threads=threads)
    top, kept = [], []
    for i in range(0, len(texts), batch):
        out = pred.predict(texts=texts[i : i + batch], top_k=1)
        top.append(out.indices[:, 0])
        if out.kept_counts is not None:
            kept.extend(out.kept_counts.tolist())
    return np.concatenate(top), (None if not kept else np.asarray(kept, dtype=object))


def compare(
    int8: Path, fp32: Path, texts: list[Any], labels: np.ndarray, batch: int, threads: int
) -> dict[str, Any]:
    """Paired comparison on the same examples: delta = int8 correct - fp32 correct, per example."""
    (p8, k8), (p32, k32) = (predictions(f, texts, batch, threads) for f in (int8, fp32))
    c8, c32 = (p8 == labels).astype(float), (p32 == labels).astype(float)
    d = c8 - c32
    kept_equal = None if k8 is None else float(np.mean([a == b for a, b in zip(k8, k32, strict=True)]))
    return {
        "int8": str(int8),
        "fp32": str(fp32),
        "bytes_fp32": fp32.stat().st_size,
        "bytes_int8": int8.stat().st_size,
        "mb_fp32": fp32.stat().st_size / 1e6,
        "mb_int8": int8.stat().st_size / 1e6,
        "smaller": fp32.stat().st_size / int8.stat().st_size,
        "acc_fp32": 100 * c32.mean(),
        "acc_int8": 100 * c8.mean(),
        "delta_pt": 100 * d.mean(),
        "delta_se_pt": 100 * d.std(ddof=1) / np.sqrt(len(d)),
        "top1_agreement": float((p8 == p32).mean()),
        "kept_counts_equal": kept_equal,
    }


def parse_pair(spec: str) -> tuple[str, Path, Path]:
    name, _, files = spec.partition("=")
    int8, _, fp32 = files.partition(":")
    q = Path(int8)
    return name, q, Path(fp32) if fp32 else q.with_name(f"{q.stem}.fp32{q.suffix}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="GLUE dev.tsv")
    ap.add_argument("--pair", action="append", required=True, help="NAME=INT8.onnx[:FP32.onnx]")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    examples = glue_tsv(args.data)
    texts, labels = [e.inputs for e in examples], np.asarray([e.label for e in examples])
    results: dict[str, Any] = {
        "data": str(args.data),
        "examples": len(examples),
        "machine": platform.machine(),
    }
    for name, int8, fp32 in map(parse_pair, args.pair):
        t0 = time.perf_counter()
        r = results[name] = compare(int8, fp32, texts, labels, args.batch, args.threads)
        print(
            f"{name}: {r['mb_fp32']:.1f} -> {r['mb_int8']:.1f} MB ({r['smaller']:.2f}x), acc {r['acc_fp32']:.2f} -> "
            f"{r['acc_int8']:.2f} ({r['delta_pt']:+.2f} +- {r['delta_se_pt']:.2f} pt), agreement "
            f"{r['top1_agreement']:.1%} [{time.perf_counter() - t0:.0f} s]",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
