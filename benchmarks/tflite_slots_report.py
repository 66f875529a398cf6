"""The report of benchmarks/tflite_slots.py: one JSON (commit, every file, every ratio, the targets)
and a PNG (latency × dense per file, top-1 agreement with the ONNX file of the same settings)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
from common import environment, write_json

from sttabt_edge.export.tflite_slots import SLOT_QUANTILE

TARGET_RATIO_MARGIN = 0.05  # TFLite ratio (× dense TFLite) <= ONNX ratio (× dense ONNX) + this
TARGET_AGREEMENT = 0.97  # top-1 agreement with the ONNX file of the same settings
TARGET_INT8_SHRINK = 3.5  # fp32 size / INT8 size
TARGET_INT8_PTS = 1.0  # INT8 accuracy within this of fp32 (points)


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def ratio(pairs: dict[str, Any], a: str, b: str) -> dict[str, float] | None:
    r = pairs.get(f"{a}_vs_{b}")
    if r is None:
        return None
    return {
        "p50": round(r["ratio_p50"], 3),
        "p10": round(r["ratio_p10"], 3),
        "p90": round(r["ratio_p90"], 3),
        "a_p50_ms": round(r["a"]["p50_ms"], 2),
        "b_p50_ms": round(r["b"]["p50_ms"], 2),
    }


def file_rows(
    build: dict[str, Any], pairs: dict[str, Any], specs: list[Any], int8_vs: dict[str, tuple[str, ...]]
) -> dict[str, Any]:
    acc = build["accuracy"]
    vs = {s.name: s.vs for s in specs} | int8_vs
    onnx_of = {s.name: s.onnx for s in specs} | {s.int8: s.onnx for s in specs if s.int8}
    rows = {}
    for name, f in build["files"].items():
        a = acc.get(name, {})
        onnx = onnx_of.get(name)
        agree = None
        if onnx and onnx in acc:
            agree = float(np.mean(np.array(a["top1"]) == np.array(acc[onnx]["top1"])))
        kept = a.get("kept_per_layer_mean")
        slots = f.get("slots") or {}
        rows[name] = {
            "target": f["spec"]["target"],
            "size_mb": round(f["size_bytes"] / 2**20, 2),
            "accuracy": a.get("accuracy"),
            "onnx_file": onnx,
            "top1_agreement_with_onnx": agree,
            "kept_per_layer_mean": kept,
            "kept_mean": None if kept is None else round(float(np.mean(kept)), 1),
            "slots": slots.get("sizes"),
            "slots_mean": None if not slots.get("sizes") else round(float(np.mean(slots["sizes"][:-1])), 1),
            "slot_sizing": slots.get("sizing"),
            "quantile": slots.get("quantile"),
            "calibration_samples": slots.get("calibration_samples"),
            "xnnpack": f.get("xnnpack"),
            "approx_weights": f.get("approx_weights"),
            "ratios": {b: ratio(pairs, name, b) for b in vs.get(name, ())},
        }
    return rows


def targets(rows: dict[str, Any], build: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in (0.15, 0.3):
        cal, onnx = rows[f"k{k}_q{SLOT_QUANTILE}"], rows[f"onnx_k{k}"]
        t, o = (
            (cal["ratios"].get("dense") or {}).get("p50"),
            (onnx["ratios"].get("onnx_dense") or {}).get("p50"),
        )
        int8 = rows[f"k{k}_int8"]
        out[f"keep {k}"] = {
            "tflite_ratio_vs_dense_tflite": t,
            "onnx_ratio_vs_dense_onnx": o,
            "ratio_met": None if t is None or o is None else t <= o + TARGET_RATIO_MARGIN,
            "top1_agreement_with_onnx": cal["top1_agreement_with_onnx"],
            "agreement_met": cal["top1_agreement_with_onnx"] >= TARGET_AGREEMENT,
            "faster_than_dense_tflite": None if t is None else t < 1.0,
            "int8_size_shrink": round(cal["size_mb"] / int8["size_mb"], 2),
            "int8_size_met": cal["size_mb"] / int8["size_mb"] >= TARGET_INT8_SHRINK,
            "int8_accuracy_pts_vs_fp32": round(100 * (int8["accuracy"] - cal["accuracy"]), 1),
            "int8_accuracy_met": abs(int8["accuracy"] - cal["accuracy"]) * 100 <= TARGET_INT8_PTS,
            "int8_ratio_vs_dense_int8": (int8["ratios"].get("dense_int8") or {}).get("p50"),
            "int8_accuracy_pts_vs_dense_int8": round(
                100 * (int8["accuracy"] - rows["dense_int8"]["accuracy"]), 1
            ),
            "int8_approx_weights": int8["approx_weights"],
        }
        if f"k{k}_int8_f16approx" in rows:
            out[f"keep {k}"] |= approx_weights_rows(build, rows, k)
    if "dist_k0.15" in rows:  # a distilled ApproxNet: accuracy within 0.5 pt of its ONNX file
        t, o = rows["dist_k0.15"], rows["onnx_dist_k0.15"]
        tr, orat = (
            (t["ratios"].get("dense") or {}).get("p50"),
            (o["ratios"].get("onnx_dense") or {}).get("p50"),
        )
        out["distilled keep 0.15"] = {
            "tflite_accuracy": t["accuracy"],
            "onnx_accuracy": o["accuracy"],
            "accuracy_met": abs(t["accuracy"] - o["accuracy"]) * 100 <= 0.5,
            "top1_agreement_with_onnx": t["top1_agreement_with_onnx"],
            "tflite_ratio_vs_dense_tflite": tr,
            "onnx_ratio_vs_dense_onnx": orat,
            "ratio_met": None if tr is None or orat is None else tr <= orat + TARGET_RATIO_MARGIN,
        }
    if "trained" in rows:
        out["trained"] = trained_rows(build, rows)
    d, q = rows["dense"], rows["dense_int8"]
    out["dense int8"] = {
        "size_shrink": round(d["size_mb"] / q["size_mb"], 2),
        "accuracy_pts_vs_fp32": round(100 * (q["accuracy"] - d["accuracy"]), 1),
    }
    return out


def approx_weights_rows(build: dict[str, Any], rows: dict[str, Any], k: float) -> dict[str, Any]:
    """The INT8 file with a float16 ApproxNet against the default (float32 ApproxNet): size, accuracy,
    top-1 and kept-count agreement on the held-out images, the exporter's kept-count check."""
    name, f16 = f"k{k}_int8", f"k{k}_int8_f16approx"
    cal, h = rows[f"k{k}_q{SLOT_QUANTILE}"], rows[f16]
    acc = build["accuracy"]
    top1 = {n: np.array(acc[n]["top1"]) for n in (name, f16)}
    kept = {n: np.array(acc[n]["kept"]) for n in (name, f16)}
    return {
        "int8_f16approx_size_shrink": round(cal["size_mb"] / h["size_mb"], 2),
        "int8_f16approx_size_met": cal["size_mb"] / h["size_mb"] >= TARGET_INT8_SHRINK,
        "int8_f16approx_bytes_saved": build["files"][name]["size_bytes"] - build["files"][f16]["size_bytes"],
        "int8_f16approx_accuracy_pts_vs_fp32": round(100 * (h["accuracy"] - cal["accuracy"]), 1),
        "int8_f16approx_top1_agreement_with_int8": float(np.mean(top1[name] == top1[f16])),
        "int8_f16approx_images_with_other_kept_counts": int((kept[name] != kept[f16]).any(1).sum()),
        "int8_f16approx_max_kept_count_change": int(np.abs(kept[name] - kept[f16]).max()),
        "int8_f16approx_export_kept_counts_equal": (build["files"][f16]["self_check"] or {}).get(
            "kept_counts_equal"
        ),
        "int8_f16approx_latency_over_int8": (h["ratios"].get(name) or {}).get("p50"),
    }


def trained_rows(build: dict[str, Any], rows: dict[str, Any]) -> dict[str, Any]:
    """A trained STTABT dir as `export --target tflite` writes it (fp32, INT8) against dense TFLite
    of the same precision; its own PyTorch held-out evaluation and its ONNX file beside it."""
    t, q, d, dq = rows["trained"], rows["trained_int8"], rows["dense"], rows["dense_int8"]

    def p50(row: dict[str, Any], vs: str) -> float | None:
        return (row["ratios"].get(vs) or {}).get("p50")

    return {
        "dir": build["trained"]["dir"],
        "pytorch_eval": build["trained"]["eval"],
        "onnx_accuracy": rows.get("onnx_trained", {}).get("accuracy"),
        "tflite_accuracy": t["accuracy"],
        "tflite_top1_agreement_with_onnx": t["top1_agreement_with_onnx"],
        "tflite_accuracy_pts_vs_dense_tflite": round(100 * (t["accuracy"] - d["accuracy"]), 1),
        "tflite_ratio_vs_dense_tflite": p50(t, "dense"),
        "int8_accuracy": q["accuracy"],
        "int8_accuracy_pts_vs_fp32": round(100 * (q["accuracy"] - t["accuracy"]), 1),
        "int8_accuracy_pts_vs_dense_int8": round(100 * (q["accuracy"] - dq["accuracy"]), 1),
        "int8_size_shrink": round(t["size_mb"] / q["size_mb"], 2),
        "int8_ratio_vs_dense_int8": p50(q, "dense_int8"),
        "int8_ratio_vs_dense_fp32": p50(q, "dense"),
        "onnx_ratio_vs_dense_onnx": p50(rows["onnx_trained"], "onnx_dense")
        if "onnx_trained" in rows
        else None,
    }


def measured_commits(build: dict[str, Any], timed: dict[str, Any]) -> list[str]:
    """The commits the files were built and timed at; refused unless their measured code (export,
    runtime, the package) is the same, so every number comes from one version of it."""
    commits = {f.get("commit", build["environment"]["commit"]) for f in build["files"].values()}
    commits |= {r.get("commit", timed["environment"]["commit"]) for r in timed["pairs"].values()}
    heads = sorted({c.removesuffix("+dirty") for c in commits})
    for a, b in zip(heads, heads[1:], strict=False):
        code = ["git", "diff", "--quiet", a, b, "--", "export", "runtime", "sttabt_edge"]
        if subprocess.run(code, capture_output=True, check=False).returncode != 0:
            raise SystemExit(
                f"files built or timed at {a} and {b}, whose code differs: rerun them at one commit"
            )
    return sorted(commits)


def report(work: Path, out: Path, specs: list[Any], int8_vs: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    build, timed = _read(work / "build.json"), _read(work / "time.json")
    commits = measured_commits(build, timed)
    rows = file_rows(build, timed["pairs"], specs, int8_vs)
    payload = {
        "benchmark": "benchmarks/tflite_slots.py (issue #26)",
        "environment": build["environment"],
        "measured_at_commits": commits,
        "report_commit": environment()["commit"],
        "distilled_approx": build.get("approx"),
        "trained": build.get("trained"),
        "dirty_files_at_build": build.get("dirty"),
        "dirty_files_at_time": timed.get("dirty"),
        "images": build["images"],
        "latency": "sttabt-edge bench A --vs B --inputs <32 held-out images>: worker processes, "
        "2 threads, batch 1, block alternation (first run of each block dropped), median of per-round ratios",
        "default_quantile": SLOT_QUANTILE,
        "files": rows,
        "targets": targets(rows, build),
        "export_warnings": sorted(set(build.get("log", []))),
    }
    write_json(out, payload)
    plot(rows, out.with_suffix(".png"))
    return payload


def plot(rows: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = ["bound", "q0.9", f"q{SLOT_QUANTILE}", "q1.0", "count", "int8"]
    width = 0.38
    for i, k in enumerate((0.15, 0.3)):
        xs = np.arange(len(names)) + (i - 0.5) * width
        r, a = [], []
        for n in names:
            row = rows.get(f"k{k}_{n}", {})
            vs = "dense_int8" if n == "int8" else "dense"
            r.append(((row.get("ratios") or {}).get(vs) or {}).get("p50", np.nan))
            a.append(100 * (row.get("top1_agreement_with_onnx") or np.nan))
        left.bar(xs, r, width, label=f"keep {k}")
        right.bar(xs, a, width, label=f"keep {k}")
        onnx = (rows[f"onnx_k{k}"]["ratios"].get("onnx_dense") or {}).get("p50")
        if onnx is not None:
            left.axhline(onnx, color=f"C{i}", ls=":", lw=1)
            left.axhline(
                onnx + TARGET_RATIO_MARGIN, color=f"C{i}", ls="--", lw=1, label=f"ONNX keep {k} (+0.05)"
            )
    left.axhline(1.0, color="k", lw=0.8)
    labels = [*names[:-1], "int8\n(× dense int8)"]
    for ax in (left, right):
        ax.set_xticks(np.arange(len(names)), labels)
    left.legend(fontsize=7, loc="upper center")
    right.legend(fontsize=7, loc="lower left")
    left.set_ylabel("latency × dense TFLite (median per-round ratio)")
    right.set_ylabel("top-1 agreement with the ONNX file, %")
    right.axhline(100 * TARGET_AGREEMENT, color="k", ls="--", lw=0.8)
    right.set_ylim(90, 100.5)
    fig.suptitle(
        "DeiT-Tiny STTABT TFLite, untrained ÷8 one-head ApproxNet: slots calibrated vs bound vs count"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
