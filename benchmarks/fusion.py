"""Fused ONNX Runtime kernels (export/fusion.py) on exported dense and STTABT graphs.

For each fp32 export (dense and STTABT; exported here with the CLI unless given), this writes
beside it:

* ``fused``: ``fuse_onnx`` defaults (our MultiHeadAttention pass + residual ``Add`` -> ``Sum``);
* ``mha_only`` / ``sum_only``: each half of it alone (attribution);
* ``ort_only``: onnxruntime.transformers' own Python fusions only (SkipLayerNormalization with
  bias, BiasGelu; what its BERT optimizer does with our graphs, whose attention it cannot match);
* dynamic INT8 (``quantize_onnx``) of the unfused graph and of each fused one;

and reports op counts (in the file, and after ORT's session-level optimisation: what a CPU
session runs), parity through the runtime on real data (max abs logit difference and identical
kept counts against the unfused file, at batch 1 with each example at its own length and at
batch 8 padded; accuracy where the data has labels), and latency at batch 1: every variant
in its own worker process, all timed in one interleaved run per text length (each model
``--block`` runs in turn per round, the first dropped), with medians of per-round ratios of
wall time and of process CPU time (CPU time is steadier on a loaded machine). ``X|noskip``
is file X run with ORT's ``SkipLayerNormFusion`` disabled (``disabled_optimizers``), the
runtime-side alternative to the ``Sum`` rewrite.

    .venv/bin/python benchmarks/fusion.py --model minilm                  # ~10 min on 2 shared cores
    .venv/bin/python benchmarks/fusion.py --model deit --samples 200

Writes benchmarks/results/fusion_<model>.json (with the commit and the load average).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, environment, quiet_third_party, write_json  # noqa: E402

from sttabt_edge.data import glue_tsv, image_folder, model_class_names  # noqa: E402
from sttabt_edge.export import ort as ort_utils  # noqa: E402
from sttabt_edge.export.fusion import fuse_onnx, op_counts  # noqa: E402
from sttabt_edge.export.quantize import quantize_onnx  # noqa: E402
from sttabt_edge.runtime import load  # noqa: E402

MODELS = {
    "minilm": (SHARED / "models" / "minilm-l6-sst2", SHARED / "data" / "glue" / "SST-2" / "dev.tsv"),
    "deit": (SHARED / "models" / "deit-tiny-imagenet", SHARED / "data" / "imagenet-sample"),
}


def export(model: Path, data: Path, method: str, out: Path, keep_ratio: float) -> Path:
    """fp32 export with the CLI (untrained ApproxNet for STTABT: latency is representative)."""
    if out.is_file():
        return out
    cmd = [
        str(Path(sys.executable).with_name("sttabt-edge")),
        "export",
        "--model",
        str(model),
        "--calib",
        str(data),
        "--latency-runs",
        "0",
        "--out",
        str(out),
    ]
    cmd += (
        ["--method", "dense"]
        if method == "dense"
        else ["--approx", "untrained", "--keep-ratio", str(keep_ratio)]
    )
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def examples(model: str, data: Path, model_dir: Path, limit: int | None) -> tuple[list[Any], np.ndarray]:
    ex = glue_tsv(data) if model == "minilm" else image_folder(data, model_class_names(model_dir))
    ex = ex[:limit] if limit else ex
    return [e.inputs for e in ex], np.asarray([e.label for e in ex])


def outputs(path: Path, items: list[Any], batch: int, threads: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits and kept counts of every example; text batches padded to their longest member."""
    pred = load(path, threads=threads)
    logits, kept = [], []
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        feeds = pred.preprocess(texts=chunk) if pred.text is not None else pred.preprocess(images=chunk)
        out = pred.run(feeds)
        logits.append(out["logits"])
        if "kept_counts" in out:
            kept.append(out["kept_counts"])
    return np.concatenate(logits), (np.concatenate(kept) if kept else None)


def parity(ref: Path, other: Path, items: list[Any], labels: np.ndarray, threads: int) -> dict[str, Any]:
    """``other`` vs ``ref`` at batch 1 (own lengths) and batch 8 (padded)."""
    res: dict[str, Any] = {}
    for batch in (1, 8):
        (la, ka), (lb, kb) = outputs(ref, items, batch, threads), outputs(other, items, batch, threads)
        res[f"batch{batch}"] = {
            "max_abs_logit_diff": float(np.abs(la - lb).max()),
            "kept_counts_equal": None if ka is None else bool(np.array_equal(ka, kb)),
            "top1_agreement": float((la.argmax(1) == lb.argmax(1)).mean()),
            "acc_ref": float(100 * (la.argmax(1) == labels).mean()),
            "acc_other": float(100 * (lb.argmax(1) == labels).mean()),
            "mean_kept_ref": None if ka is None else np.asarray(ka, float).mean(0).round(2).tolist(),
        }
    res["n"] = len(items)
    return res


FP32_VARIANTS = {
    "fused": {},
    "mha_only": {"residual_sum": False},
    "sum_only": {"attention": False},
    "ort_only": {"attention": False, "residual_sum": False, "ort": True},
}
NOSKIP = "SkipLayerNormFusion"


def variants(fp32: Path, check: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """The fused copies and INT8 files beside ``fp32``; op counts of each."""
    import onnx

    stem = fp32.with_suffix("")
    paths: dict[str, Path] = {"fp32": fp32}
    reports: dict[str, Any] = {}
    for name, kw in FP32_VARIANTS.items():
        paths[name] = Path(f"{stem}.{name}.onnx")
        t0 = time.perf_counter()
        reports[name] = {
            **fuse_onnx(fp32, paths[name], check_inputs=check, **kw).to_dict(),
            "seconds": time.perf_counter() - t0,
            "options": kw,
        }
    for name in ("fp32", "fused", "mha_only", "sum_only"):
        q = "int8" if name == "fp32" else f"{name}_int8"
        paths[q] = Path(f"{stem}.{q}.onnx")
        quantize_onnx(paths[name], paths[q])
    counts = {k: op_counts(onnx.load(str(p), load_external_data=False)) for k, p in paths.items()}
    session = {k: ort_utils.optimized_node_counts(p) for k, p in paths.items()}
    return {
        "paths": {k: str(p) for k, p in paths.items()},
        "mb": {k: p.stat().st_size / 1e6 for k, p in paths.items()},
        "fusion_reports": reports,
        "file_ops": counts,
        "file_nodes": {k: sum(c.values()) for k, c in counts.items()},
        "session_ops": session,
        "session_nodes": {k: c["total"] for k, c in session.items()},  # optimized_node_counts adds "total"
    }


def _worker(spec: str, threads: int, seq_len: int) -> None:
    """Serve runs over stdin/stdout: 'run' -> 'wall_ms cpu_ms' (process CPU time: all ORT threads).

    ``spec``: a model path, or ``PATH|Opt1,Opt2``: the same runtime session options with those
    ONNX Runtime graph optimizers disabled (``disabled_optimizers``), run on the raw session."""
    from sttabt_edge.runtime.bench import synthetic_inputs

    path, _, disabled = spec.partition("|")
    pred = load(path, threads=threads)
    feeds = synthetic_inputs(pred, 1, seq_len)
    run = pred.run
    if disabled:
        import onnxruntime as ort

        from sttabt_edge.runtime.sessions import session_options

        session = ort.InferenceSession(
            path,
            session_options(threads, quiet=True),
            providers=["CPUExecutionProvider"],
            disabled_optimizers=disabled.split(","),
        )
        run = lambda f: session.run(None, f)  # noqa: E731
    for line in sys.stdin:
        if line.strip() != "run":
            continue
        w0, c0 = time.perf_counter(), time.process_time()
        run(feeds)
        print(f"{(time.perf_counter() - w0) * 1e3:.6f} {(time.process_time() - c0) * 1e3:.6f}", flush=True)


def interleaved(paths: dict[str, str], seq_len: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every model in its own worker; per round each runs ``block`` times in turn (first run dropped).

    Returns per model the median warm wall and CPU ms, and per round the medians, for ratios."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    procs = {
        k: subprocess.Popen(
            [sys.executable, __file__, "--worker", p, str(args.threads), str(max(seq_len, 1))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for k, p in paths.items()
    }

    def ask(proc: subprocess.Popen) -> tuple[float, float]:
        assert proc.stdin and proc.stdout
        proc.stdin.write("run\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited ({proc.wait()})")
        wall, cpu = line.split()
        return float(wall), float(cpu)

    rounds: dict[str, list[tuple[float, float]]] = {k: [] for k in paths}
    load_before = os.getloadavg()[0]
    try:
        for i in range(args.warmup + args.runs):
            for k, proc in procs.items():
                runs = [ask(proc) for _ in range(args.block)][1 if args.block > 1 else 0 :]
                if i >= args.warmup:
                    rounds[k].append(
                        (float(np.median([r[0] for r in runs])), float(np.median([r[1] for r in runs])))
                    )
    finally:
        for proc in procs.values():
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=60)
    return {
        "seq_len": seq_len,
        "rounds": rounds,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "median_ms": {
            k: {"wall": float(np.median([r[0] for r in v])), "cpu": float(np.median([r[1] for r in v]))}
            for k, v in rounds.items()
        },
    }


def ratios(run: dict[str, Any], a: str, b: str) -> dict[str, Any]:
    """Median (p10, p90) over rounds of a / b, wall time and CPU time."""
    out: dict[str, Any] = {"pair": f"{a}/{b}", "seq_len": run["seq_len"]}
    for j, kind in enumerate(("wall", "cpu")):
        r = np.array([x[j] / y[j] for x, y in zip(run["rounds"][a], run["rounds"][b], strict=True)])
        out[kind] = {
            "median": float(np.median(r)),
            "p10": float(np.percentile(r, 10)),
            "p90": float(np.percentile(r, 90)),
            "a_ms": run["median_ms"][a][kind],
            "b_ms": run["median_ms"][b][kind],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="minilm")
    ap.add_argument("--dense", type=Path, help="fp32 dense export (default: exported into --work)")
    ap.add_argument("--sttabt", type=Path, help="fp32 STTABT export (default: exported into --work)")
    ap.add_argument("--keep-ratio", type=float, default=0.15)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fusion_bench"))
    ap.add_argument("--samples", type=int, default=0, help="examples for parity (0: all)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[25, 64, 128], help="text lengths timed")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    model_dir, data = MODELS[args.model]
    args.work.mkdir(parents=True, exist_ok=True)
    files = {
        "dense": args.dense or export(model_dir, data, "dense", args.work / f"{args.model}_dense.onnx", 0),
        "sttabt": args.sttabt
        or export(model_dir, data, "sttabt", args.work / f"{args.model}_sttabt.onnx", args.keep_ratio),
    }
    items, labels = examples(args.model, data, model_dir, args.samples or None)
    pred = load(files["dense"])
    check = [pred.preprocess(texts=items[:8]) if pred.text is not None else pred.preprocess(images=items[:8])]
    result: dict[str, Any] = {
        "model": args.model,
        "environment": environment(),
        "load_average_start": os.getloadavg(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "methods": {},
    }
    lengths = args.lengths if pred.text is not None else [0]
    timed: dict[str, str] = {}
    for method, fp32 in files.items():
        v = variants(fp32, check)
        p = {k: Path(x) for k, x in v["paths"].items()}
        few = min(len(items), 64)
        v["parity"] = {
            "fused/fp32": parity(fp32, p["fused"], items, labels, args.threads),
            "fused_int8/int8": parity(p["int8"], p["fused_int8"], items, labels, args.threads),
            "int8/fp32": parity(fp32, p["int8"], items, labels, args.threads),
            **{
                f"{k}/fp32": parity(fp32, p[k], items[:few], labels[:few], args.threads)
                for k in ("mha_only", "sum_only", "ort_only")
            },
        }
        result["methods"][method] = v
        for k in ("fp32", "fused", "ort_only", "int8", "fused_int8", "mha_only_int8", "sum_only_int8"):
            timed[f"{method}_{k}"] = str(p[k])
        for k in ("fp32", "int8"):
            timed[f"{method}_{k}|noskip"] = f"{p[k]}|{NOSKIP}"
        print(f"{method}: file nodes {v['file_nodes']}\n  session nodes {v['session_nodes']}", flush=True)
        for name, r in v["parity"].items():
            b1, b8 = r["batch1"], r["batch8"]
            print(
                f"  {name:16s} max|dlogit| b1 {b1['max_abs_logit_diff']:.2g} b8 {b8['max_abs_logit_diff']:.2g}, "
                f"kept equal {b1['kept_counts_equal']}/{b8['kept_counts_equal']}, agree {b1['top1_agreement']:.4f}, "
                f"acc {b1['acc_ref']:.2f} -> {b1['acc_other']:.2f} (n {r['n']})",
                flush=True,
            )
    pairs = [
        (f"{m}_{a}", f"{m}_{b}")
        for m in files
        for a, b in (
            ("fused", "fp32"),
            ("ort_only", "fp32"),
            ("fp32|noskip", "fp32"),
            ("fused_int8", "int8"),
            ("mha_only_int8", "int8"),
            ("sum_only_int8", "int8"),
            ("int8|noskip", "int8"),
            ("int8", "fp32"),
            ("fused_int8", "fp32"),
        )
    ]
    pairs += [
        ("sttabt_int8", "dense_int8"),
        ("sttabt_fused_int8", "dense_fused_int8"),
        ("sttabt_fused_int8", "dense_int8"),
    ]
    result["latency"] = []
    for n in lengths:
        run = interleaved(timed, n, args)
        entry = {
            "seq_len": n,
            "load_before": run["load_before"],
            "load_after": run["load_after"],
            "median_ms": run["median_ms"],
            "ratios": [ratios(run, a, b) for a, b in pairs],
            "rounds": run["rounds"],
        }
        result["latency"].append(entry)
        print(f"length {n} (load {run['load_before']:.1f} -> {run['load_after']:.1f}):", flush=True)
        for r in entry["ratios"]:
            w, c = r["wall"], r["cpu"]
            print(
                f"  {r['pair']:38s} wall {w['median']:.3f} ({w['p10']:.2f}-{w['p90']:.2f}) "
                f"{w['a_ms']:6.2f}/{w['b_ms']:6.2f} ms | cpu {c['median']:.3f} ({c['p10']:.2f}-{c['p90']:.2f})",
                flush=True,
            )
    result["load_average_end"] = os.getloadavg()
    out = args.out or Path(__file__).resolve().parent / "results" / f"fusion_{args.model}.json"
    write_json(out, result)
    print("wrote", out)


if __name__ == "__main__":
    quiet_third_party()
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
