"""The quickstart's report (benchmarks/quickstart.py): per-model rows, the rich table, the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

# the same four files as compress delivers, named and coloured alike
from sttabt_edge.compress.report import COLORS, LABELS


def model_rows(
    evals: dict, flops: dict, parity: dict, lat: dict, files: dict, lengths: list[int]
) -> dict[str, dict[str, Any]]:
    """One record per file: accuracy, token budget, cost, latency ratios and parity, all measured.
    Latency at the first input length is ``p50_ms`` / ``latency_x_*``; at others ``latency_x_*_at_N``."""
    rows = {}
    for name, path in files.items():
        method, p = name.split("_")[0], parity[name]
        rows[name] = {
            **{k: evals[name][k] for k in ("accuracy", "retention", "occupancy")},
            "gflops": flops[method]["gflops"],
            "flops_ratio": flops[method]["flops_ratio"],
            "mb": Path(path).stat().st_size / 1e6,
            "onnx": str(path),
            "parity_passed": p["passed"],
            "parity_max_abs_logit": p["max_abs_logit"],
            "parity_top1_agreement": p["top1_agreement"],
            "parity_kept_agreement": p["kept_agreement"],
        }
        for i, n in enumerate(lengths):
            at = "" if i == 0 else f"_at_{n}"
            vs = lat.get(f"{name}_vs_dense_fp32@{n}")
            dense_ms = lat[f"sttabt_fp32_vs_dense_fp32@{n}"]["b"]["p50_ms"]
            rows[name][f"p50_ms{at}"] = vs["a"]["p50_ms"] if vs else dense_ms
            rows[name][f"latency_x_dense_fp32{at}"] = vs["ratio_p50"] if vs else 1.0
            if name == "sttabt_int8":
                rows[name][f"latency_x_dense_int8{at}"] = lat[f"sttabt_int8_vs_dense_int8@{n}"]["ratio_p50"]
    return rows


def summary_table(s: dict[str, Any], phases: dict[str, float]) -> Table:
    """The README's table: one row per ONNX file."""
    table = Table(
        title=f"{s['title']}: {s['eval_examples']} {s['eval_name']}, latency batch 1, "
        f"{s['threads']} ORT threads{s['bench_input']}"
    )
    lengths = s["bench_lengths"]
    at = [""] + [f"_at_{n}" for n in lengths[1:]]
    heads = ["p50 ms", "latency x"] + [f"latency x @{n}" for n in lengths[1:]]
    if len(lengths) > 1 or s["task"] == "sst2":
        heads[:2] = [f"p50 ms @{lengths[0]}", f"latency x @{lengths[0]}"]
    for col in ("model", "acc %", "retention", "occupancy", "GFLOPs", "FLOPs x", "MB", *heads, "parity"):
        table.add_column(col, justify="right")
    for name, r in s["models"].items():
        lats = [
            f"{r['latency_x_dense_fp32' + a]:.2f}"
            + (f" ({r['latency_x_dense_int8' + a]:.2f} vs INT8)" if name == "sttabt_int8" else "")
            for a in at
        ]
        table.add_row(
            LABELS[name],
            f"{100 * r['accuracy']:.2f}",
            f"{r['retention']:.3f}",
            f"{r['occupancy']:.3f}",
            f"{r['gflops']:.3f}",
            f"{r['flops_ratio']:.3f}",
            f"{r['mb']:.1f}",
            f"{r['p50_ms']:.2f}",
            *lats,
            f"{'ok' if r['parity_passed'] else 'FAILED'} {r['parity_top1_agreement']:.3f}",
        )
    table.caption = (
        f"keep ratio r={s['keep_ratio']:g} (every layer), bisected to retention {s['target_retention']:g} "
        f"on {s['calib_samples']} unlabeled training inputs (got {s['calib_retention']:.3f}); ApproxNet "
        f"attention KL {s['approx_kl_before']:.3f} -> {s['approx_kl_after']:.3f}; parity: top-1 agreement "
        f"with PyTorch fp32 on {s['verify_examples']} held-out inputs; phases "
        + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
        + f"; total {s['wall_time_s'] / 60:.1f} min"
    )
    return table


def plot(s: dict[str, Any], path: Path) -> None:
    """Accuracy vs batch-1 p50 latency, the four files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, r in s["models"].items():
        ax.scatter(r["p50_ms"], 100 * r["accuracy"], s=70, color=COLORS[name], label=LABELS[name])
        ax.annotate(
            f"ret {r['retention']:.2f}, FLOPs x{r['flops_ratio']:.2f}\n{r['mb']:.0f} MB",
            (r["p50_ms"], 100 * r["accuracy"]),
            textcoords="offset points",
            xytext=(7, -3),
            fontsize=7,
        )
    ax.set_xlabel(f"ONNX Runtime p50 latency, batch 1, {s['threads']} threads (ms)")
    ax.set_ylabel(f"accuracy % ({s['eval_examples']} {s['eval_name']})")
    ax.set_title(
        f"{s['title']}: STTABT r={s['keep_ratio']:g} (retention {s['target_retention']:g}) vs dense",
        fontsize=9,
    )
    ax.margins(x=0.4, y=0.4)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
