"""TFLite static slots (issue #26): calibrated vs upper-bound union slots vs count, INT8, XNNPACK.

DeiT-Tiny, STTABT with ``--approx untrained`` (÷8, one head), keep 0.15 and 0.3. Every file is
written by the export path of ``sttabt-edge export`` (``export.pipeline.run_export``, verified
by the exporter) with its calibration images from the *training* half of imagenet-sample
(``split_half``); accuracy on the 500 held-out images; latency on 32 of them.

Files: dense TFLite fp32 / INT8 (dynamic-range weights); per keep ratio, union TFLite with slots
calibrated at quantiles 0.9, 0.95 (the default) and 1.0 (64 calibration images), with the default
quantile on the CLI's default 16 images (keep 0.15), at the union's upper bound, and the count rule;
INT8 of the default file (ApproxNet weights float32, the default) and with them float16
("_int8_f16approx", beside its rebuilt fp32 twin "_rebuilt"; the exporter's kept-count check is
recorded, not enforced: on DeiT-Tiny it fails); ONNX fp32 of the same settings (dense, union, count).
XNNPACK: the default keep-0.15 file rebuilt without each removal (one-head products as
FULLY_CONNECTED; the per-element GATHER_ND of the hidden states), timed against it.

``--approx DIR`` (``train approx``) adds keep 0.15 with that distilled ApproxNet, TFLite and ONNX
("dist_"); ``--trained DIR`` (``train concrete``) adds that model as ``export --model DIR`` writes it,
TFLite fp32 / INT8 and ONNX ("trained"). Stages write ``<work>/<stage>.json``, every file and pair
with its commit (``report`` refuses commits whose export/runtime/package code differs):

    python benchmarks/tflite_slots.py build  --work /work/runs/tflite/bench   # exports + accuracy
    python benchmarks/tflite_slots.py build  --work ... --approx DIR --only dist onnx_dist
    python benchmarks/tflite_slots.py build  --work ... --trained DIR --only trained onnx_trained
    /work/runs/quiet.sh python benchmarks/tflite_slots.py time --work ... --only k0.15   # < 5 min each
    /work/runs/quiet.sh python benchmarks/tflite_slots.py time --work ... --only k0.3 dense onnx xnn dist
    python benchmarks/tflite_slots.py report --work ... --out benchmarks/results/tflite_slots.json

A subset (``--only dense onnx_dense onnx_k k0.15_q0.95 k0.3_q0.95 k0.15_rebuilt k0.3_rebuilt``)
reports what it built (benchmarks/results/tflite_int8.json).

Latency: ``sttabt-edge bench A --vs B --inputs DIR`` (runtime.bench: worker processes, LiteRT or
ORT, 2 threads, batch 1, block alternation, first run of each block dropped), median of the
per-round ratios, p10-p90 beside it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from common import SHARED, environment, quiet_third_party, write_json
from tflite_variants import Undone, kept_check_reported, undone

from sttabt_edge.export.tflite_graph import APPROX_WEIGHTS_DEFAULT, ApproxWeights
from sttabt_edge.export.tflite_slots import SLOT_QUANTILE, SlotSizing
from sttabt_edge.method.backtrack import Nesting
from sttabt_edge.reducers.spec import Target

MODEL = SHARED / "models" / "deit-tiny-imagenet"
DATA = SHARED / "data" / "imagenet-sample"
KEEPS = (0.15, 0.3)
QUANTILES = (0.9, SLOT_QUANTILE, 1.0)


@dataclass(frozen=True)
class FileSpec:
    name: str
    target: Target = "tflite"
    method: Literal["sttabt", "dense"] = "sttabt"
    keep: float = 0.15
    nesting: Nesting = "union"
    slots: SlotSizing | None = None
    quantile: float = SLOT_QUANTILE
    calib_samples: Literal[16, 64] = 64  # from the training half: data/calib16 or data/calib64
    int8: str | None = None  # also --quantize int8: this name is the INT8 file, the spec's the fp32 beside it
    approx_weights: ApproxWeights = APPROX_WEIGHTS_DEFAULT  # the INT8 file's ApproxNet weights
    variant: Undone | None = None  # an XNNPACK removal undone
    approx: str | None = None  # a distilled ApproxNet dir (None: the untrained ÷8 one-head one)
    model: str = str(MODEL)  # or a trained STTABT dir (its own reducer: keep, slots rule, approx unused)
    onnx: str | None = None  # the ONNX file of the same settings (top-1 agreement)
    vs: tuple[str, ...] = field(default_factory=tuple)  # timed against these


def specs(approx: Path | None = None, trained: Path | None = None) -> list[FileSpec]:
    """Every file; with ``approx`` (a `train approx` dir) also keep 0.15 with that ApproxNet ("dist_"),
    with ``trained`` (a `train concrete` dir) that model, fp32 and INT8, and its ONNX file."""
    out = [
        FileSpec("dense", method="dense", onnx="onnx_dense", int8="dense_int8"),
        FileSpec("onnx_dense", target="onnx", method="dense"),
    ]
    for k in KEEPS:
        p = f"k{k}"
        for q in QUANTILES:
            int8 = f"{p}_int8" if q == SLOT_QUANTILE else None
            out.append(
                FileSpec(
                    f"{p}_q{q}",
                    keep=k,
                    slots="calibrated",
                    quantile=q,
                    onnx=f"onnx_{p}",
                    vs=("dense",),
                    int8=int8,
                )
            )
        out += [
            FileSpec(f"{p}_bound", keep=k, slots="bound", onnx=f"onnx_{p}", vs=("dense",)),
            FileSpec(f"{p}_count", keep=k, nesting="count", onnx=f"onnx_{p}_count", vs=("dense",)),
            FileSpec(f"onnx_{p}", target="onnx", keep=k, vs=("onnx_dense",)),
            FileSpec(f"onnx_{p}_count", target="onnx", keep=k, nesting="count"),
            FileSpec(  # the default file again, its INT8 with a float16 ApproxNet
                f"{p}_rebuilt",
                keep=k,
                slots="calibrated",
                onnx=f"onnx_{p}",
                int8=f"{p}_int8_f16approx",
                approx_weights="float16",
            ),
        ]
    d = f"k0.15_q{SLOT_QUANTILE}"
    out += [
        FileSpec("k0.15_calib16", slots="calibrated", calib_samples=16, onnx="onnx_k0.15", vs=("dense",)),
        FileSpec("xnn_k0.15_fc", slots="calibrated", variant="fc", onnx="onnx_k0.15", vs=(d,)),
        FileSpec("xnn_k0.15_gathernd", slots="calibrated", variant="gathernd", onnx="onnx_k0.15", vs=(d,)),
    ]
    if approx is not None:
        a = str(approx)
        out += [
            FileSpec("dist_k0.15", approx=a, onnx="onnx_dist_k0.15", vs=("dense",)),
            FileSpec("onnx_dist_k0.15", target="onnx", approx=a, vs=("onnx_dense",)),
        ]
    if trained is not None:
        t = str(trained)
        out += [
            FileSpec(
                "trained",
                model=t,
                slots="calibrated",
                onnx="onnx_trained",
                int8="trained_int8",
                vs=("dense",),
            ),
            FileSpec("onnx_trained", target="onnx", model=t, vs=("onnx_dense",)),
        ]
    return out


def int8_pairs(trained: bool = False) -> dict[str, tuple[str, ...]]:
    """INT8 files (written with their fp32 twin) and what each is timed against."""
    pairs = {"dense_int8": ("dense",), **{f"k{k}_int8": ("dense_int8", "dense") for k in KEEPS}}
    pairs |= {"trained_int8": ("dense_int8", "dense")} if trained else {}
    return pairs | {f"k{k}_int8_f16approx": ("dense_int8", f"k{k}_int8") for k in KEEPS}


def suffix(s: FileSpec) -> str:
    return ".onnx" if s.target == "onnx" else ".tflite"


def image_dirs(work: Path) -> dict[str, Any]:
    """Symlink folders: calibration (training half), held-out half, the latency subset."""
    from sttabt_edge.data import image_folder, model_class_names
    from sttabt_edge.train.sources import split_half

    train, held = split_half(image_folder(DATA, model_class_names(MODEL)))
    sets = {
        "calib64": train[:64],
        "calib16": train[:16],
        "heldout": held,
        "lat32": held[:: len(held) // 32][:32],
    }
    for name, items in sets.items():
        d = work / "data" / name
        d.mkdir(parents=True, exist_ok=True)
        for e in items:
            link = d / Path(e.inputs).name
            if not link.exists():
                link.symlink_to(Path(e.inputs).resolve())
    return {name: len(items) for name, items in sets.items()}


def build_file(s: FileSpec, work: Path, log: list[str]) -> dict[str, dict[str, Any]]:
    """The spec's file(s) through the CLI's export path: {name: record} (with ``int8``: both files)."""
    from sttabt_edge.export.pipeline import fp32_sibling, run_export
    from sttabt_edge.export.request import (
        ExportRequest,
        GraphOptions,
        ModelSource,
        QuantizeOptions,
        VerifyOptions,
    )
    from sttabt_edge.export.tflite import read_sidecar
    from sttabt_edge.model_info import is_trained_dir
    from sttabt_edge.reducers.spec import ReducerOptions, spec_from_options

    out = work / "files" / f"{s.int8 or s.name}{suffix(s)}"
    out.parent.mkdir(parents=True, exist_ok=True)
    options = ReducerOptions(keep_ratio=s.keep, nesting=s.nesting)
    req = ExportRequest(
        source=ModelSource(model=s.model, approx=None if s.approx is None else Path(s.approx)),
        out=out,
        reducer=None if is_trained_dir(s.model) else spec_from_options(s.method, options),  # trained: its own
        graph=GraphOptions(
            target=s.target,
            slots=s.slots if s.target == "tflite" and s.method == "sttabt" else None,
            slot_quantile=s.quantile,
        ),
        quantize=QuantizeOptions(mode="int8" if s.int8 else None, approx_weights=s.approx_weights),
        verify=VerifyOptions(
            calib=work / "data" / f"calib{s.calib_samples}", calib_samples=s.calib_samples, latency_runs=0
        ),
    )
    t0 = time.perf_counter()
    with undone(s.variant), kept_check_reported(s.approx_weights):
        summary = dict(run_export(req, warn=log.append))
    paths = {s.name: fp32_sibling(out), s.int8: out} if s.int8 else {s.name: out}
    records = {}
    for name, path in paths.items():
        side = read_sidecar(path)["tflite"] if s.target == "tflite" else {}
        records[name] = {
            "path": str(path),
            "spec": {k: v for k, v in vars(s).items() if k != "vs"} | {"int8": name == s.int8},
            "export_s": round(time.perf_counter() - t0, 1),
            "size_bytes": path.stat().st_size,
            "slots": side.get("slots"),
            "approx_weights": side.get("approx_weights"),
            "xnnpack": side.get("xnnpack"),
            "self_check": summary.get("quantization") if name == s.int8 else summary.get("parity"),
            "commit": environment()["commit"],
        }
    return records


def accuracy(path: Path, work: Path) -> dict[str, Any]:
    """Top-1 predictions, labels and kept counts of a file over the held-out images (1 thread)."""
    from sttabt_edge.data import image_folder, model_class_names
    from sttabt_edge.runtime import load

    exs = image_folder(work / "data" / "heldout", model_class_names(MODEL))
    pred = load(path, threads=1)
    top1, kept = [], []
    for i in range(0, len(exs), 25):
        out = pred.run(pred.preprocess(images=[e.inputs for e in exs[i : i + 25]]))
        top1.append(np.asarray(out["logits"]).argmax(-1))
        if "kept_counts" in out:
            kept.append(np.asarray(out["kept_counts"], dtype=np.float64))
    y = np.array([e.label for e in exs])
    p = np.concatenate(top1)
    return {
        "top1": p.tolist(),
        "accuracy": float((p == y).mean()),
        "labels": y.tolist(),
        "kept_per_layer_mean": np.concatenate(kept).mean(0).round(2).tolist() if kept else None,
        "kept": np.concatenate(kept).astype(int).tolist() if kept else None,  # per image and layer
    }


def extra_dirs(build: dict[str, Any]) -> tuple[Path | None, Path | None]:
    """The distilled ApproxNet and trained model dirs a build was given (``--approx``, ``--trained``)."""
    a, t = (build.get(k, {}).get("dir") for k in ("approx", "trained"))
    return (a and Path(a)), (t and Path(t))


def stage_build(work: Path, only: list[str], approx: Path | None, trained: Path | None) -> None:
    state_path = work / "build.json"
    state = read(state_path) if state_path.is_file() else {"files": {}, "accuracy": {}, "log": []}
    state["images"] = image_dirs(work)
    if approx is not None:
        state["approx"] = {"dir": str(approx), "report": read(approx / "report.json")}
    if trained is not None:  # its own held-out evaluation (PyTorch) and what it was trained to
        rec = read(trained / "sttabt.json")
        state["trained"] = {"dir": str(trained), **{k: rec.get(k) for k in ("eval", "step", "reducer")}}
    for s in specs(*extra_dirs(state)):
        if only and not any(s.name.startswith(o) for o in only):
            continue
        if s.name not in state["files"]:
            print(f"building {s.name} ...", flush=True)
            state["files"].update(build_file(s, work, state["log"]))
            state.update(environment=environment(), dirty=dirty_files())
            write_json(state_path, state)
        for name in (s.name, s.int8):
            if name is not None and name not in state["accuracy"]:
                state["accuracy"][name] = accuracy(Path(state["files"][name]["path"]), work)
                print(f"  {name}: held-out top-1 {state['accuracy'][name]['accuracy']:.3f}", flush=True)
                write_json(state_path, state)


def stage_time(work: Path, only: list[str], runs: int, block: int, threads: int) -> None:
    from sttabt_edge.runtime.bench import bench

    build = read(work / "build.json")
    state_path = work / "time.json"
    state = read(state_path) if state_path.is_file() else {"pairs": {}}
    approx, trained = extra_dirs(build)
    timed = [(s.name, b) for s in specs(approx, trained) for b in s.vs] + [
        (a, b) for a, vs in int8_pairs(trained is not None).items() for b in vs
    ]
    for a, b in timed:
        if only and not any(a.startswith(o) for o in only) or not {a, b} <= build["files"].keys():
            continue  # not asked for, or a subset build without one of the two files
        r = bench(
            build["files"][a]["path"],
            vs=build["files"][b]["path"],
            threads=threads,
            runs=runs,
            warmup=5,
            block=block,
            inputs=work / "data" / "lat32",
            progress=False,
        ).to_dict()
        for side in (r["a"], r["b"]):
            side.pop("runs_ms", None)
        state["pairs"][f"{a}_vs_{b}"] = r | {"commit": environment()["commit"]}
        print(
            f"{a} / {b}: median ratio {r['ratio_p50']:.3f} (p10 {r['ratio_p10']:.3f}, p90 {r['ratio_p90']:.3f})"
        )
        state.update(environment=environment(), dirty=dirty_files())
        write_json(state_path, state)


def dirty_files() -> list[str]:
    """Tracked files that differ from HEAD (a shared working tree: other people's edits in progress)."""
    out = subprocess.run(["git", "diff", "--name-only", "HEAD"], capture_output=True, text=True, check=False)
    return out.stdout.split()


def read(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=("build", "time", "report"))
    p.add_argument("--work", type=Path, required=True, help="files, images and stage results")
    p.add_argument("--only", nargs="*", default=[], help="file names starting with these")
    p.add_argument("--runs", type=int, default=25, help="rounds per pair")
    p.add_argument("--block", type=int, default=5, help="runs per model per round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/tflite_slots.json"))
    p.add_argument("--approx", type=Path, help="build: also keep 0.15 with this distilled ApproxNet dir")
    p.add_argument("--trained", type=Path, help="build: also this trained STTABT dir (train concrete)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage == "build":
        stage_build(args.work, args.only, args.approx, args.trained)
    elif args.stage == "time":
        stage_time(args.work, args.only, args.runs, args.block, args.threads)
    else:
        from tflite_slots_report import report

        approx, trained = extra_dirs(read(args.work / "build.json"))
        report(args.work, args.out, specs(approx, trained), int8_pairs(trained is not None))


if __name__ == "__main__":
    quiet_third_party()
    sys.exit(main())
