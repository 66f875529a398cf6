"""How a model's linear layers scale with the number of tokens on this CPU (ONNX Runtime).

Token pruning cuts FLOPs in proportion to the kept tokens, but a (M, C) x (C, 4C) MatMul with
small M is bound by streaming the weights, not by arithmetic. This script builds one graph of
just the model's linear layers (Q, K, V, O, FC1, FC2 per layer, random weights, the real
shapes), times it at several token counts M, and reports latency(M) / latency(N) against
M / N: the floor that limits `bench --vs` ratios at small token counts.

    .venv/bin/python benchmarks/linear_floor.py            # ~2 min; run it on a quiet machine

Writes benchmarks/results/linear_floor.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.progress import track
from rich.table import Table

# name: (layers, hidden C, FFN width, full token count N, token counts to time)
SHAPES = {
    "deit-tiny": (12, 192, 768, 197, [1, 10, 20, 40, 60, 100, 140, 197]),
    "minilm-l6": (6, 384, 1536, 128, [1, 5, 10, 20, 40, 64, 96, 128]),
}


def linear_stack(layers: int, c: int, ffn: int, seed: int = 0) -> bytes:
    """ONNX model: x (M, C) through `layers` x [Q, K, V, O, FC1, FC2] Gemms (outputs chained)."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        for j, (k_in, k_out) in enumerate([(c, c)] * 4 + [(c, ffn), (ffn, c)]):
            w, b, y = f"w{i}_{j}", f"b{i}_{j}", f"y{i}_{j}"
            inits += [
                numpy_helper.from_array((rng.standard_normal((k_in, k_out)) * 0.02).astype(np.float32), w),
                numpy_helper.from_array(np.zeros(k_out, np.float32), b),
            ]
            src = x if j < 4 else (f"y{i}_3" if j == 4 else f"y{i}_4")  # Q,K,V,O read x; FC1 <- O; FC2 <- FC1
            nodes.append(helper.make_node("Gemm", [src, w, b], [y]))
        x = f"y{i}_5"
    outs = [
        helper.make_tensor_value_info(f"y{i}_{j}", TensorProto.FLOAT, None)
        for i in range(layers)
        for j in (0, 1, 2)
    ] + [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)]
    graph = helper.make_graph(
        nodes, "linear_stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", c])], outs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime reads
    return model.SerializeToString()


def time_counts(
    model: bytes, c: int, counts: list[int], threads: int, runs: int, spinning: bool
) -> dict[int, float]:
    """Median ms per token count, counts interleaved round-robin so drift hits all alike."""
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    feeds = {m: {"x": np.random.default_rng(m).standard_normal((m, c)).astype(np.float32)} for m in counts}
    for m in counts:
        for _ in range(5):
            sess.run(None, feeds[m])
    times: dict[int, list[float]] = {m: [] for m in counts}
    for _ in track(range(runs), description=f"C={c}", transient=True):
        for m in counts:
            t0 = time.perf_counter()
            sess.run(None, feeds[m])
            times[m].append((time.perf_counter() - t0) * 1e3)
    return {m: float(np.median(t)) for m, t in times.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--spin", action="store_true", help="ORT threads spin inside runs")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "linear_floor")
    args = ap.parse_args(argv)
    console, result = (
        Console(),
        {"threads": args.threads, "runs": args.runs, "spinning": args.spin, "models": {}},
    )
    for name, (layers, c, ffn, n, counts) in SHAPES.items():
        ms = time_counts(linear_stack(layers, c, ffn), c, counts, args.threads, args.runs, args.spin)
        weights_mb = layers * (4 * c * c + 2 * c * ffn) * 4 / 2**20
        result["models"][name] = {
            "layers": layers,
            "hidden": c,
            "ffn": ffn,
            "full_tokens": n,
            "weights_mb": weights_mb,
            "p50_ms": {str(m): t for m, t in ms.items()},
            "latency_ratio": {str(m): ms[m] / ms[n] for m in counts},
        }
        table = Table(
            title=f"{name}: linear layers only ({weights_mb:.0f} MB fp32 weights), {args.threads} threads"
        )
        for col in ("tokens M", "M / N", "p50 ms", "latency ratio", "ratio / (M/N)"):
            table.add_column(col, justify="right")
        for m in counts:
            r = ms[m] / ms[n]
            table.add_row(str(m), f"{m / n:.3f}", f"{ms[m]:.2f}", f"{r:.3f}", f"{r / (m / n):.2f}")
        console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    plot(result, args.out.with_suffix(".png"))
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, r in result["models"].items():
        m = np.array([int(k) for k in r["latency_ratio"]]) / r["full_tokens"]
        ax.plot(m, list(r["latency_ratio"].values()), "o-", label=f"{name} ({r['weights_mb']:.0f} MB)")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="proportional to tokens (FLOPs)")
    ax.set_xlabel("kept tokens / all tokens")
    ax.set_ylabel("latency / latency at all tokens")
    ax.set_title(f"Linear layers, ONNX Runtime, {result['threads']} threads")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
