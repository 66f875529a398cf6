"""``compress``'s report: report.json (everything, with the commit), report.md (the table a
user reads) and report.png (the search, and the files on the accuracy-latency plane)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sttabt_edge.atomic import atomic_write_text
from sttabt_edge.compress.config import flat_config

LABELS = {
    "dense_fp32": "dense fp32",
    "dense_int8": "dense INT8",
    "sttabt_fp32": "STTABT fp32",
    "sttabt_int8": "STTABT INT8",
}
COLORS = {
    "dense_fp32": "tab:gray",
    "dense_int8": "black",
    "sttabt_fp32": "tab:red",
    "sttabt_int8": "tab:purple",
}


def latency_ms(report: dict[str, Any]) -> dict[str, float]:
    """p50 per file, each from its pair against dense fp32 (dense fp32 itself: the first pair's)."""
    pairs = report["latency"]["pairs"]
    out = {"dense_fp32": pairs["sttabt_fp32_vs_dense_fp32"]["b"]["p50_ms"]}
    for key, r in pairs.items():
        a, b = key.split("_vs_")
        if b == "dense_fp32":
            out[a] = r["a"]["p50_ms"]
    return out


def rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One row per file: runtime accuracy (held-out; the report set too), size, latency, parity."""
    files, pairs, ms = report["files"], report["latency"]["pairs"], latency_ms(report)
    out = {}
    for name, path in files["paths"].items():
        acc, ver = files["accuracy"][name], files["verify"][name]
        row = {
            "held_out_accuracy": acc["held_out"]["accuracy"],
            "mb": Path(path).stat().st_size / 1e6,
            "p50_ms": ms.get(name),
            "x_dense_fp32": 1.0
            if name == "dense_fp32"
            else pairs.get(f"{name}_vs_dense_fp32", {}).get("ratio_p50"),
            "verified": ver["passed"],
            "top1_agreement": ver["top1_agreement"],
            "file": path,
        }
        if "report" in acc:
            row["report_accuracy"] = acc["report"]["accuracy"]
        if name == "sttabt_int8":
            row["x_dense_int8"] = pairs["sttabt_int8_vs_dense_int8"]["ratio_p50"]
        out[name] = row
    return out


def _cost(table: dict[str, dict[str, Any]], name: str) -> float | None:
    """A file's latency for the verdict: its per-round ratio to dense fp32 when measured (robust to
    the machine's drift across pairs), else its p50 ms, scaled by dense fp32's so both compare."""
    row = table[name]
    if row.get("x_dense_fp32") is not None:
        return float(row["x_dense_fp32"])
    dense = table.get("dense_fp32", {}).get("p50_ms")
    if row["p50_ms"] is None or not dense:
        return None
    return float(row["p50_ms"]) / float(dense)


def _faster(table: dict[str, dict[str, Any]], name: str, delivered: str) -> bool:
    """Is ``name`` faster than the delivered file? STTABT INT8 against dense INT8 has its own pair:
    that direct per-round ratio decides; otherwise the two ratios to dense fp32 do."""
    direct = table[delivered].get("x_dense_int8")
    if name == "dense_int8" and direct is not None:
        return float(direct) > 1.0
    mine, theirs = _cost(table, delivered), _cost(table, name)
    return mine is not None and theirs is not None and theirs < mine


def verdict(table: dict[str, dict[str, Any]], max_drop: float | None = None) -> dict[str, Any]:
    """Which file to ship. With an accuracy budget (``max_drop`` points below dense fp32 on the
    held-out split) the fastest file within it, since the user said that much accuracy may go:
    a dense INT8 file within the budget and faster beats a pruned one, even a slightly more
    accurate one (differences inside the budget are mostly held-out noise). Without a budget
    (a retention target) a dense file must be at least as accurate *and* faster to win. Speed is
    compared by per-round ratios (``_faster``), not by p50s taken in different pairs."""
    delivered = "sttabt_int8" if "sttabt_int8" in table else "sttabt_fp32"
    mine = table[delivered]
    timed = {n: r for n, r in table.items() if _cost(table, n) is not None}
    if max_drop is not None and "dense_fp32" in table:
        floor = table["dense_fp32"]["held_out_accuracy"] - max_drop
        ok = {n: r for n, r in timed.items() if r["held_out_accuracy"] >= floor}
        rule = f"the fastest file within {max_drop:g} points of dense fp32 on the held-out split"
    else:
        ok = {n: r for n, r in timed.items() if r["held_out_accuracy"] >= mine["held_out_accuracy"]}
        rule = f"a dense file wins only if at least as accurate as {LABELS[delivered]} and faster"
    better = [name for name in ("dense_int8", "dense_fp32") if name in ok and _faster(table, name, delivered)]
    better.sort(key=lambda n: _cost(table, n) or 0.0)
    deploy = better[0] if better else delivered
    return {
        "delivered": delivered,
        "dominated_by": better,
        "deploy": deploy,
        "file": table[deploy]["file"],
        "rule": rule,
        "max_drop": max_drop,
    }


def verdict_line(v: dict[str, Any]) -> str:
    if not v["dominated_by"]:
        return f"Deploy: {LABELS[v['delivered']]} ({v['file']}); no dense file is faster under the rule ({v['rule']})."
    why = (
        f"within the {v['max_drop']:g}-point budget on the held-out split"
        if v.get("max_drop") is not None
        else "at least as accurate on the held-out split"
    )
    return (
        f"Deploy: **{LABELS[v['deploy']]}** ({v['file']}). It is {why} and faster than "
        f"{LABELS[v['delivered']]} at this input length, so token pruning does not pay here."
    )


def _inputs_note(inputs: dict[str, Any]) -> str:
    note = f", the first {inputs['count']} held-out inputs in turn ({inputs['source']}"
    if inputs.get("mean_tokens") is not None:
        note += f", {inputs['mean_tokens']:.1f} tokens on average"
    return note + ")"


def _resolution(cfg: dict[str, Any], data: dict[str, Any]) -> str:
    """A warning when one held-out example moves accuracy by more than half the budget: then the
    within-budget test is decided by one or two examples, i.e. by noise."""
    step = 100.0 / max(int(data["held_out"]), 1)
    if cfg.get("max_drop") is None or step <= cfg["max_drop"] / 2:
        return ""
    return (
        f" Caution: one held-out example is {step:.2f} points, so the {cfg['max_drop']:g}-point budget is"
        f" decided by {cfg['max_drop'] / step:.1f} examples; raise --holdout (or pass --holdout-data)."
    )


def markdown(report: dict[str, Any]) -> str:
    cfg, chosen, dense, data = (
        flat_config(report["config"]),
        report["chosen"],
        report["dense"],
        report["data"],
    )
    goal = (
        f"at most {cfg['max_drop']:g} points below dense"
        if cfg["max_drop"] is not None
        else f"retention {cfg['target_retention']:g}"
    )
    lines = [
        f"# compress: {cfg['model']}",
        "",
        f"Goal: {goal} on {data['held_out']} held-out training examples (selection); "
        f"{'within' if report.get('within_budget', True) else 'NOT within'} the goal.{_resolution(cfg, data)}",
        f"Chosen: **{chosen['kind']}**"
        + (f" (keep ratio {chosen['keep_ratio']:g})" if chosen["keep_ratio"] else "")
        + f", retention {chosen['retention']:.3f}, occupancy {chosen['occupancy']:.3f}, FLOPs "
        f"{chosen['flops_ratio']:.3f}x, held-out {chosen['accuracy']:.2f}% (dense {dense['accuracy']:.2f}%).",
        verdict_line(report["verdict"]),
        "",
    ]
    rep = "report acc %" if data["report"] else None
    head = ["file", "held-out acc %", *([rep] if rep else []), "MB", "p50 ms", "x dense fp32", "verified"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows(report).items():
        x = f"{r['x_dense_fp32']:.2f}" if r["x_dense_fp32"] is not None else "-"
        if "x_dense_int8" in r:
            x += f" ({r['x_dense_int8']:.2f} x dense INT8)"
        cells = [
            LABELS[name],
            f"{r['held_out_accuracy']:.2f}",
            *([f"{r['report_accuracy']:.2f}"] if rep else []),
            f"{r['mb']:.1f}",
            f"{r['p50_ms']:.2f}" if r["p50_ms"] else "-",
            x,
            f"{'yes' if r['verified'] else 'NO'} (top-1 {r['top1_agreement']:.3f})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lat = report["latency"]
    lines += [
        "",
        f"Latency: batch 1, {lat['threads']} ONNX Runtime threads, median of {lat['runs']} rounds of "
        f"{lat['block']} runs, block alternation"
        + (f", {lat['seq_len']}-token inputs" if lat["seq_len"] else "")
        + (_inputs_note(lat["inputs"]) if lat.get("inputs") else "")
        + ". Held-out accuracy through the runtime; "
        + (
            "the report set ("
            + str(data["report"])
            + " examples) is reported only, never used for a choice. "
            if rep
            else ""
        )
        + "Wall time: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report["wall_s"].items())
        + ".",
        "",
        "Search (held-out, training-free back-tracking unless marked):",
        "",
        "| kind | keep ratio | retention | occupancy | FLOPs x | acc % |",
        "|---|---|---|---|---|---|",
    ]
    points = report["search"] + (
        [report["thresholds"]["point"]] if "point" in report.get("thresholds", {}) else []
    )
    for p in points:
        kr = (
            f"{p['keep_ratio']:g}"
            if p["keep_ratio"] is not None
            else f"trained for {p['target_retention']:g}"
        )
        lines.append(
            f"| {p['kind']} | {kr} | {p['retention']:.3f} | {p['occupancy']:.3f} | {p['flops_ratio']:.3f} "
            f"| {p['accuracy']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Left: held-out accuracy against retention (search probes, trained point, dense, the goal).
    Right: held-out runtime accuracy against latency (per-round ratio to dense fp32, as the verdict
    compares: p50s of different pairs drift with the machine) of the delivered files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    dense, cfg = report["dense"], flat_config(report["config"])
    probes = sorted(report["search"], key=lambda p: p["retention"])
    a.plot(
        [p["retention"] for p in probes],
        [p["accuracy"] for p in probes],
        "o-",
        color="tab:red",
        label="training-free back-tracking",
    )
    if "point" in report.get("thresholds", {}):
        t = report["thresholds"]["point"]
        a.scatter(
            [t["retention"]],
            [t["accuracy"]],
            marker="*",
            s=160,
            color="tab:purple",
            label="trained thresholds",
        )
    a.axhline(dense["accuracy"], color="tab:gray", ls="--", label="dense")
    if cfg["max_drop"] is not None:
        a.axhspan(
            dense["accuracy"] - cfg["max_drop"],
            dense["accuracy"],
            color="tab:green",
            alpha=0.12,
            label=f"within {cfg['max_drop']:g} pt",
        )
    c = report["chosen"]
    a.scatter([c["retention"]], [c["accuracy"]], s=220, facecolors="none", edgecolors="black", label="chosen")
    a.set_xlabel("retention (mean fraction of real tokens per layer)")
    a.set_ylabel("held-out accuracy %")
    a.legend(fontsize=8)
    table = rows(report)
    cost = {name: _cost(table, name) for name in table}
    for name, r in table.items():
        if cost[name] is not None:
            b.scatter(cost[name], r["held_out_accuracy"], s=70, color=COLORS[name], label=LABELS[name])
    if cfg["max_drop"] is not None and "dense_fp32" in table:
        floor = table["dense_fp32"]["held_out_accuracy"] - cfg["max_drop"]
        b.axhline(floor, ls=":", color="tab:green", label=f"budget floor ({floor:.1f})")
    v = report["verdict"]
    if cost[v["deploy"]] is not None:
        b.scatter(
            [cost[v["deploy"]]],
            [table[v["deploy"]]["held_out_accuracy"]],
            s=220,
            facecolors="none",
            edgecolors="black",
            label="deploy",
        )
    b.set_xlabel(
        f"latency × dense fp32 (median per-round ratio; batch 1, {report['latency']['threads']} threads)"
    )
    b.set_ylabel("held-out accuracy % (runtime)")
    b.margins(x=0.3, y=0.3)
    b.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"compress {Path(cfg['model']).name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, report: dict[str, Any]) -> None:
    """The verdict is decided once here; report.md and report.png read it from the report."""
    report["verdict"] = verdict(rows(report), flat_config(report["config"])["max_drop"])
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str))
    atomic_write_text(out / "report.md", markdown(report))
    plot(report, out / "report.png")
