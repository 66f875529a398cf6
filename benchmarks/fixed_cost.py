"""Where an exported STTABT file spends its time: the ApproxNet, the back-tracking, the sparse model.

Cuts the shipped file itself (no re-export, so fusion and INT8 are exactly as deployed) with
``onnx.utils.Extractor`` into two prefixes of its graph: the ApproxNet alone (graph inputs to its
attention probabilities, the ``/approx_maps/`` Softmax nodes) and the ApproxNet plus back-tracking
(graph inputs to ``kept_counts``, which the keep masks alone determine). Those two, the whole file
and a dense file are timed round-robin in one process at batch 1 on synthetic inputs of each
``--lengths`` value (text; an image model has one size); the sparse model's share is the whole
file minus the second prefix. Ratios are medians of per-round ratios to the dense file.

A fifth file in the same rounds is the ceiling: the dense file on as many tokens as the pipeline
keeps per layer on average (``dense_at_kept``, from its own ``kept_counts`` on that input). No
token pruning at that retention can run faster than this, whatever the ApproxNet costs (it
even undercounts attention, whose cost is quadratic in the per-layer count), so where
``dense_at_kept`` is near 1.0 the input is too short for pruning to pay on this CPU.

    python benchmarks/fixed_cost.py --file w/sttabt.onnx --dense w/dense.onnx --lengths 8 24 64 128 \\
        --threads 1 --out benchmarks/results/fixed_cost_minilm.json

The ApproxNet and back-tracking cost (nearly) the same whatever is pruned: that fixed cost is
what a short input cannot win back (``length_sweep.py`` shows the crossing).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from common import environment, interleaved_latency, write_json
from onnx.utils import Extractor
from rich.console import Console
from rich.table import Table

from sttabt_edge.method.approxnet import APPROX_SCOPE
from sttabt_edge.runtime.bench import synthetic_inputs
from sttabt_edge.runtime.predictor import load
from sttabt_edge.runtime.sessions import session_options

PARTS = ("approxnet", "approxnet+masks", "pipeline", "dense")


def cut(path: Path, work: Path) -> dict[str, Path]:
    """The ApproxNet prefix and the ApproxNet+back-tracking prefix of an exported pipeline."""
    model = onnx.load(str(path))
    inputs = [i.name for i in model.graph.input]
    maps = [
        n.output[0] for n in model.graph.node if n.op_type == "Softmax" and n.name.startswith(APPROX_SCOPE)
    ]
    if not maps:
        raise SystemExit(
            f"fixed_cost.py: {path} has no ApproxNet nodes ({APPROX_SCOPE}...): not an STTABT export"
        )
    if "kept_counts" not in {o.name for o in model.graph.output}:
        raise SystemExit(f"fixed_cost.py: {path} has no kept_counts output")
    ex = Extractor(model)
    out = {"approxnet": work / "approxnet.onnx", "approxnet+masks": work / "masks.onnx"}
    onnx.save(ex.extract_model(inputs, maps), str(out["approxnet"]))
    onnx.save(ex.extract_model(inputs, ["kept_counts"]), str(out["approxnet+masks"]))
    return out


def node_count(path: Path, threads: int) -> int:
    """Nodes after ONNX Runtime's own optimisation (what actually runs)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options(threads, quiet=True)
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return len(onnx.load(opts.optimized_model_filepath, load_external_data=False).graph.node)


def mean_kept(path: Path, feeds: dict[str, np.ndarray], threads: int) -> float:
    """Real tokens entering each layer, averaged over the layers, for one input."""
    import onnxruntime as ort

    s = ort.InferenceSession(
        str(path), session_options(threads, quiet=True), providers=["CPUExecutionProvider"]
    )
    names = {i.name for i in s.get_inputs()}
    (kept,) = s.run(["kept_counts"], {k: v for k, v in feeds.items() if k in names})  # (B, L)
    return float(kept[0].mean())


def time_parts(
    files: dict[str, Path],
    feeds: dict[str, dict[str, np.ndarray]],
    threads: int,
    runs: int,
    spinning: bool = False,
) -> dict[str, dict]:
    import onnxruntime as ort

    sessions = {
        k: ort.InferenceSession(
            str(p),
            session_options(threads, spinning=spinning, quiet=True),
            providers=["CPUExecutionProvider"],
        )
        for k, p in files.items()
    }

    def runner(s: ort.InferenceSession, given: dict[str, np.ndarray]):
        names = {i.name for i in s.get_inputs()}
        f = {k: v for k, v in given.items() if k in names}
        return lambda: s.run(None, f)

    order = ["dense", *(k for k in sessions if k != "dense")]  # interleaved_latency's reference is its first
    lat = interleaved_latency({k: runner(sessions[k], feeds[k]) for k in order}, runs=runs, warmup=5)
    return {k: {"p50_ms": lat[k]["median_ms"], "x_dense": lat[k]["ratio_vs_ref"]} for k in sessions}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--file", type=Path, required=True, help="an exported STTABT pipeline (.onnx)")
    p.add_argument("--dense", type=Path, required=True, help="the dense export to compare with")
    p.add_argument("--lengths", type=int, nargs="+", default=[8, 24, 64, 128], help="text lengths (tokens)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--spinning", action="store_true", help="ORT's intra-op spinning, inside a run only")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    t0 = time.perf_counter()
    console = Console()
    pred = load(args.file)
    lengths = args.lengths if pred.text is not None else [None]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fixed-cost-") as tmp:
        files = {**cut(args.file, Path(tmp)), "pipeline": args.file, "dense": args.dense}
        nodes = {k: node_count(v, args.threads) for k, v in files.items()}
        for n in lengths:
            feeds = synthetic_inputs(pred, 1, n or 0)
            real = int(feeds["attention_mask"].sum()) if "attention_mask" in feeds else None
            kept = mean_kept(args.file, feeds, args.threads)
            timed, given = dict(files), {k: feeds for k in files}
            if real is not None:  # text: the dense file on the mean kept count (images have one size)
                timed["dense_at_kept"] = args.dense
                given["dense_at_kept"] = synthetic_inputs(pred, 1, max(round(kept), 1))
            parts = time_parts(timed, given, args.threads, args.runs, args.spinning)
            parts["masks"] = {
                k: parts["approxnet+masks"][k] - parts["approxnet"][k] for k in ("p50_ms", "x_dense")
            }
            parts["sparse_model"] = {
                k: parts["pipeline"][k] - parts["approxnet+masks"][k] for k in ("p50_ms", "x_dense")
            }
            rows.append({"tokens": real, "mean_kept": kept, "parts": parts})
    table = Table(
        title=f"{args.file.name} vs {args.dense.name}: p50 ms (× dense), batch 1, {args.threads} thread(s)"
    )
    cols = ("approxnet", "masks", "sparse_model", "pipeline", "dense", "dense_at_kept")
    for c in ("tokens", "mean kept", *cols):
        table.add_column(c, justify="right")
    for r in rows:
        cells = [
            f"{r['parts'][c]['p50_ms']:.3f} ({r['parts'][c]['x_dense']:.2f})" if c in r["parts"] else "-"
            for c in cols
        ]
        table.add_row(str(r["tokens"] or "-"), f"{r['mean_kept']:.1f}", *cells)
    console.print(table)
    console.print("ORT nodes: " + ", ".join(f"{k} {v}" for k, v in nodes.items()))
    write_json(
        args.out,
        {
            "environment": environment(),
            "command": " ".join(sys.argv),
            "file": str(args.file),
            "dense": str(args.dense),
            "threads": args.threads,
            "spinning": args.spinning,
            "runs": args.runs,
            "ort_nodes": nodes,
            "rows": rows,
            "seconds": time.perf_counter() - t0,
        },
    )


if __name__ == "__main__":
    from common import quiet_third_party

    quiet_third_party()
    main()
