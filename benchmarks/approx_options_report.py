"""approx_options.py's report: the plot and the rich summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table


def plot(results: dict[str, Any], path: Path) -> None:
    """Left: accuracy per option (bars, seed mean ± std) with the oracle and dense as lines, the
    ApproxNet's analytic FLOPs in the labels. Right: accuracy vs the head-mean-map KL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["options"]
    ratios = results["keep_ratios"]
    labels = [f"/{r['factor']} h{r['heads']}" for r in rows]
    width = 0.8 / len(ratios)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for j, r in enumerate(ratios):
        color = f"C{j}"
        ys = [100 * row["sttabt"][f"{r:g}"]["accuracy"] for row in rows]
        yerr = [100 * row["sttabt"][f"{r:g}"]["accuracy_std"] for row in rows]
        xs = [i + (j - (len(ratios) - 1) / 2) * width for i in range(len(rows))]
        left.bar(xs, ys, width, yerr=yerr, capsize=3, color=color, label=f"STTABT keep {r:g}")
        oracle = 100 * results["oracle"][f"{r:g}"]["accuracy"]
        for ax in (left, right):
            ax.axhline(oracle, color=color, linestyle=":", label=f"oracle keep {r:g}" if ax is left else None)
        kl = [row["mean_map_kl"] for row in rows]
        kl_err = [row["mean_map_kl_std"] for row in rows]
        right.errorbar(kl, ys, yerr=yerr, xerr=kl_err, fmt="o", color=color, capsize=3, zorder=3)
        for label, x, y in zip(labels, kl, ys, strict=True):
            right.annotate(label, (x, y), fontsize=7, xytext=(4, -3 if j else 3), textcoords="offset points")
    for ax in (left, right):
        ax.axhline(
            100 * results["dense"]["accuracy"],
            color="gray",
            linestyle="--",
            label="dense" if ax is left else None,
        )
        ax.grid(alpha=0.3, axis="y" if ax is left else "both")
    left.set_xticks(
        range(len(rows)),
        [f"{lb}\nFLOPs x{r['approx_flops_ratio']:.3f}" for lb, r in zip(labels, rows, strict=True)],
        fontsize=8,
    )
    low = min(100 * row["sttabt"][f"{r:g}"]["accuracy"] for row in rows for r in ratios)
    left.set_ylim(max(0.0, low - 8), 100 * results["dense"]["accuracy"] + 5)  # room for the legend
    left.set_ylabel("SST-2 dev accuracy (%)")
    left.set_xlabel("ApproxNet option (analytic FLOPs / dense: matmuls only)")
    right.set_xlabel("held-out KL of the head-mean map (what back-tracking reads)")
    left.legend(fontsize=7, loc="upper center", ncol=3)
    n = len(results["train"]["seed"])
    fig.suptitle(
        f"MiniLM-L6 SST-2 dev: ApproxNet options, {results['train']['steps']} distillation steps each "
        f"(mean ± std over {n} seed{'s' * (n > 1)})"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(results: dict[str, Any]) -> Table:
    """Per option, seed means (± sample std where there are several seeds)."""
    ratios = results["keep_ratios"]
    n = len(results["train"]["seed"])
    table = Table(title=f"SST-2 dev, {results['num_eval']} sentences; mean over {n} seed(s) (± std)")
    cols = ["option", "approx FLOPs", "mean-map KL", "per-head KL", "distil s"]
    cols += [c for r in ratios for c in (f"acc@{r:g} %", f"ret@{r:g}", f"FLOPs@{r:g}")]
    for c in cols:
        table.add_column(c, justify="right")

    def pm(mean: float, std: float | None, fmt: str) -> str:
        return f"{mean:{fmt}}" + (f" ± {std:{fmt}}" if std and n > 1 else "")

    def evals(ev: dict[str, Any]) -> list[str]:
        return [
            c
            for r in ratios
            for c in (
                pm(100 * ev[f"{r:g}"]["accuracy"], 100 * ev[f"{r:g}"].get("accuracy_std", 0.0), ".2f"),
                f"{ev[f'{r:g}']['retention']:.3f}",
                f"{ev[f'{r:g}']['flops_ratio']:.3f}",
            )
        ]

    dense = [f"{100 * results['dense']['accuracy']:.2f}", "1.000", "1.000"]
    table.add_row("dense", "", "", "", "", *dense * len(ratios))
    table.add_row("oracle", "", "0", "0", "", *evals(results["oracle"]))
    for row in results["options"]:
        table.add_row(
            f"/{row['factor']} h{row['heads']}",
            f"{row['approx_flops_ratio']:.3f}",
            pm(row["mean_map_kl"], row["mean_map_kl_std"], ".4f"),
            pm(row["per_head_kl"], row["per_head_kl_std"], ".4f"),
            f"{row['distill_seconds']:.0f}",
            *evals(row["sttabt"]),
        )
    return table
