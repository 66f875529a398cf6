"""`sttabt-edge export`'s report: a short table on stdout; the full summary only as JSON (``--json``).

The summary dict (export.pipeline.run_export) runs to ~60 lines of JSON; what a user checks
after an export is a handful of facts: where the file is, whether it matched PyTorch, what
INT8 did to size and agreement, what pruning kept and what it cost.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MIB = 2**20


def print_export_summary(summary: Mapping[str, Any], json_out: Path | None) -> None:
    """``--json -``: the JSON on stdout instead of the table; ``--json FILE``: the table, and the JSON in FILE."""
    text = json.dumps(summary, indent=2)
    if json_out is not None and str(json_out) == "-":
        print(text)
        return
    from rich.console import Console

    Console().print(export_table(summary))
    if json_out is not None:
        from sttabt_edge.cli_outputs import write_text_output

        write_text_output(json_out, text)


def export_table(summary: Mapping[str, Any]) -> Any:
    """Two columns (what, value); rows only for what the export did."""
    from rich.table import Table

    table = Table(title=f"exported {summary.get('method', '?')} -> {summary['out']}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in summary_rows(summary):
        table.add_row(key, value)
    table.caption = "full summary: --json FILE (or --json - for stdout)"
    return table


def summary_rows(s: Mapping[str, Any]) -> list[tuple[str, str]]:
    kind = "INT8" if s.get("quantization") else "fp32"
    rows = [("file", f"{s['out']} ({kind}, {s.get('size_mb', 0.0):.1f} MiB)")]
    rows += [("parity", _parity(s.get("parity"), s.get("calibration")))]
    if s.get("fusion"):
        rows.append(("fused", _fusion(s["fusion"])))
    if s.get("quantization"):
        rows.append(("INT8", _int8(s["quantization"])))
    if s.get("kept_tokens_per_layer_mean"):
        kept = " ".join(f"{v:g}" for v in s["kept_tokens_per_layer_mean"])
        rows.append(("tokens per layer", f"{kept} (of {s.get('real_tokens_mean', 0):.1f} real, mean)"))
    if s.get("flops"):
        f = s["flops"]
        rows.append(
            ("FLOPs", f"{f['ratio']:.3f} x dense ({f['gflops']:.3g} vs {f['dense_gflops']:.3g} GFLOPs)")
        )
    if s.get("latency_ms"):
        rows.append(("latency", _latency(s["latency_ms"])))
    others = [f for f in s.get("files", []) if f != s["out"]]
    if others:
        rows.append(("also wrote", "\n".join(others)))
    return rows


def _parity(parity: Mapping[str, Any] | None, calibration: str | None) -> str:
    if not parity:
        return "not verified"
    if "max_abs_diff" not in parity:  # TFLite: one report per precision
        return "; ".join(f"{k}: {_parity(v, None)}" for k, v in parity.items() if isinstance(v, Mapping))
    kept = "equal" if parity.get("kept_counts_equal", True) else "DIFFERENT"
    n = parity.get("num_samples")
    where = f" on {n} {calibration or ''} samples".replace("  ", " ") if n else ""
    return f"max |dlogit| {parity['max_abs_diff']:.1e} vs PyTorch, kept counts {kept}{where}"


def _fusion(f: Mapping[str, Any]) -> str:
    p = f.get("parity") or {}
    vs = f", max |dlogit| {p['max_abs_diff']:.1e} vs unfused" if "max_abs_diff" in p else ""
    sites = f"{f['attention_fused']}/{f['attention_sites']} attention sites"
    return f"{sites} -> MultiHeadAttention, {f['residual_sums']} residual Add -> Sum{vs}"


def _int8(q: Mapping[str, Any]) -> str:
    fp32, int8 = q.get("fp32_bytes"), q.get("int8_bytes")
    size = f"{fp32 / MIB:.1f} -> {int8 / MIB:.1f} MiB ({fp32 / int8:.2f}x smaller)" if fp32 and int8 else ""
    agree = q.get("top1_agreement")
    agreement = f", top-1 agreement with fp32 {agree:.1%}" if agree is not None else ""
    return f"{q.get('mode', 'int8')}: {size}{agreement}"


def _latency(lat: Mapping[str, float]) -> str:
    parts = [f"{k} {lat[k]:.2f} ms" for k in ("pipeline", "dense", "int8") if k in lat]
    if "pipeline_vs_dense" in lat:
        parts.append(f"pipeline/dense {lat['pipeline_vs_dense']:.2f}")
    return ", ".join(parts) + " (batch 1)"
