"""ONNX export parity over whole datasets: dense and STTABT, fp32 and INT8 (dynamic, static).

For each task (DeiT-Tiny on imagenet-sample, MiniLM-SST2 on SST-2 dev by default) the
model is exported twice (dense, and STTABT with ``--approx DIR`` or an UNTRAINED
interpolation-init ApproxNet /4 at ``--keep-ratio``), each graph is INT8-quantized twice,
and every example goes through PyTorch and all six graphs. Reported per method:

* fp32: ONNX-vs-PyTorch top-1 agreement, max abs logit diff, share of samples with
  identical kept counts, accuracies;
* int8 (dynamic / static): accuracy delta vs fp32 ONNX, top-1 agreement with fp32 ONNX;
* file sizes.

Static INT8 is calibrated on ``--calib-samples`` examples kept out of every INT8 metric
(the last images of the folder; for SST-2, the first sentences of train.tsv). Sessions
run one after another on each batch (never concurrently), 2 threads, spinning off.

    python benchmarks/export_parity.py --max-samples 64   # quick check
    python benchmarks/export_parity.py                    # full sets (lead)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from common import SHARED, environment, quiet_third_party, write_json

from sttabt_edge.data import Example, batches, glue_tsv, image_folder, image_preprocess_for, model_class_names
from sttabt_edge.export import ort as ort_utils
from sttabt_edge.export.graph import ExportModule, example_args
from sttabt_edge.export.onnx import export_onnx
from sttabt_edge.export.quantize import quantize_onnx
from sttabt_edge.method.approxnet import ApproxNet, build_approxnet
from sttabt_edge.models.loading import load_model
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.dense import DenseReducer
from sttabt_edge.reducers.sttabt import SttabtReducer
from sttabt_edge.runtime import TextPreprocess
from sttabt_edge.sparse_model import SparseClassifier

TASKS = {
    "deit": (SHARED / "models" / "deit-tiny-imagenet", SHARED / "data" / "imagenet-sample"),
    "minilm": (SHARED / "models" / "minilm-l6-sst2", SHARED / "data" / "glue" / "SST-2" / "dev.tsv"),
}
VARIANTS = ("fp32", "int8-dynamic", "int8-static")


@dataclass
class Tally:
    """Running per-graph statistics against PyTorch (fp32) or fp32 ONNX (int8)."""

    correct: int = 0
    agree: int = 0
    kept_equal: int = 0
    total: int = 0
    max_diff: float = 0.0
    delta: int = 0  # sum over samples of correct - ref_correct (the paired accuracy delta)
    flips: int = 0  # samples where exactly one of the two is correct

    def add(
        self, logits: np.ndarray, ref: np.ndarray, labels: np.ndarray, kept_same: np.ndarray, use: np.ndarray
    ) -> None:
        """Count the samples where ``use`` is True (int8 metrics leave the calibration samples out)."""
        if not use.any():
            return
        logits, ref, labels, kept_same = logits[use], ref[use], labels[use], kept_same[use]
        right, ref_right = logits.argmax(1) == labels, ref.argmax(1) == labels
        self.correct += int(right.sum())
        self.delta += int(right.sum()) - int(ref_right.sum())
        self.flips += int((right != ref_right).sum())
        self.agree += int((logits.argmax(1) == ref.argmax(1)).sum())
        self.kept_equal += int(kept_same.sum())
        self.total += len(labels)
        self.max_diff = max(self.max_diff, float(np.abs(logits - ref).max()))

    def to_dict(self) -> dict[str, float | int]:
        n = max(self.total, 1)
        return {
            "accuracy": self.correct / n,
            "top1_agreement": self.agree / n,
            "kept_counts_equal": self.kept_equal / n,
            "max_abs_logit_diff": self.max_diff,
            "samples": self.total,
            "delta": self.delta / n,
            # paired standard error of the accuracy delta vs the reference: each sample's difference
            # is -1, 0 or +1, so var = flips/n - mean**2
            "delta_se": float(np.sqrt(max(self.flips / n - (self.delta / n) ** 2, 0.0) / n)),
        }


@dataclass
class Task:
    name: str
    model_dir: Path
    examples: list[Example]  # the evaluated set (all of it for fp32 parity)
    calib: list[Example]  # static-INT8 calibration set
    in_calib: np.ndarray  # (len(examples),) bool: evaluated examples that are also calibration examples
    pre: dict = field(default_factory=dict)


def load_task(name: str, model_dir: Path, data: Path, max_samples: int | None, calib_n: int, model) -> Task:
    if data.is_dir():  # no separate image split: calibrate on the folder's last images
        examples = image_folder(data, model_class_names(model_dir))
        calib = examples[-calib_n:]
        pre = {"image": image_preprocess_for(model)}
    else:
        examples = glue_tsv(data)
        calib = glue_tsv(data.with_name("train.tsv"))[:calib_n]
        pre = {
            "text": TextPreprocess.from_file(model_dir / "tokenizer.json"),
            "max_length": int(model.config.max_position_embeddings),
        }
    examples = examples[:max_samples] if max_samples else examples
    calib_ids = {id(e) for e in calib}
    in_calib = np.array([id(e) in calib_ids for e in examples], dtype=bool)
    return Task(name, model_dir, examples, calib, in_calib, pre)


def torch_batches(
    task: Task, examples: list[Example], size: int
) -> Iterator[tuple[dict[str, torch.Tensor], np.ndarray, slice]]:
    for start, (arrays, labels) in zip(
        range(0, len(examples), size), batches(examples, size, **task.pre), strict=True
    ):
        yield (
            {k: torch.from_numpy(v) for k, v in arrays.items()},
            np.asarray(labels),
            slice(start, start + size),
        )


def make_sttabt(model, approx: Path | None, ratio: float) -> SttabtReducer:
    net = ApproxNet.load(approx, model.config) if approx else build_approxnet(model, 4, "interpolate")
    return SttabtReducer(net.eval(), keep_ratio=ratio)


def export_all(
    model,
    reducers: dict[str, Reducer],
    task: Task,
    work: Path,
    quantize_approx: bool = False,
    calibration: str = "minmax",
) -> tuple[dict, dict]:
    """fp32 + two INT8 graphs per method; -> ({method: {variant: path}}, {method: info})."""
    calib = next(torch_batches(task, task.calib, len(task.calib)))[0]
    tokenizer = task.model_dir / "tokenizer.json"
    files, info = {}, {}
    for method, reducer in reducers.items():
        t0 = time.perf_counter()
        result = export_onnx(
            SparseClassifier(model, reducer),
            work / f"{method}.onnx",
            example_inputs=calib,
            tokenizer_file=tokenizer if tokenizer.is_file() else None,
        )
        path = result.path
        session = ort_utils.open_session(path)
        feeds = ort_utils.to_feeds([i.name for i in session.get_inputs()], calib)
        del session
        files[method] = {"fp32": path}
        info[method] = {
            "export_s": time.perf_counter() - t0,
            "self_check_max_diff": result.parity.max_abs_diff,
            "bytes": {"fp32": path.stat().st_size},
        }
        for mode in ("dynamic", "static"):
            q = quantize_onnx(
                path,
                work / f"{method}.int8-{mode}.onnx",
                mode,
                feeds,
                quantize_approx=quantize_approx,
                calibration=calibration,
            )
            files[method][f"int8-{mode}"] = Path(q.path)
            info[method]["bytes"][f"int8-{mode}"] = q.int8_bytes
            info[method]["fp32_matmuls_in_int8"] = q.fp32_nodes
    return files, info


def evaluate_all(
    model, reducers: dict[str, Reducer], files: dict, task: Task, batch: int, threads: int
) -> dict:
    modules = {m: ExportModule(SparseClassifier(model, r)).eval() for m, r in reducers.items()}
    sessions = {(m, v): ort_utils.open_session(p, threads) for m, vs in files.items() for v, p in vs.items()}
    names = {k: [i.name for i in s.get_inputs()] for k, s in sessions.items()}
    tallies = {k: Tally() for k in sessions} | {(m, "torch"): Tally() for m in modules}
    for inputs, labels, where in torch_batches(task, task.examples, batch):
        every, not_calib = np.ones(len(labels), bool), ~task.in_calib[where]
        for method, module in modules.items():
            with torch.no_grad():
                ref_logits, ref_kept = (t.numpy() for t in module(*example_args(module.parts.family, inputs)))
            tallies[(method, "torch")].add(ref_logits, ref_logits, labels, every, every)
            fp32 = (ref_logits, ref_kept)  # fp32 ONNX is compared with PyTorch, int8 with fp32 ONNX
            for variant in VARIANTS:  # one session after another, never concurrently
                key = (method, variant)
                logits, kept = ort_utils.run(sessions[key], ort_utils.to_feeds(names[key], inputs))[:2]
                tallies[key].add(
                    logits,
                    fp32[0],
                    labels,
                    (kept == fp32[1]).all(1),
                    every if variant == "fp32" else not_calib,
                )
                if variant == "fp32":
                    fp32 = (logits, kept)
    return summarize(tallies, reducers)


def summarize(tallies: dict, reducers: dict[str, Reducer]) -> dict:
    out = {}
    for method in reducers:
        t = {v: tallies[(method, v)].to_dict() for v in ("torch", *VARIANTS)}
        out[method] = {
            "pytorch_accuracy": t["torch"]["accuracy"],
            "onnx_fp32": {
                k: t["fp32"][k]
                for k in ("accuracy", "top1_agreement", "max_abs_logit_diff", "kept_counts_equal", "samples")
            },
            **{
                v: {
                    "accuracy": t[v]["accuracy"],
                    # paired on the same samples (the calibration ones left out of both)
                    "accuracy_delta_vs_fp32": t[v]["delta"],
                    "accuracy_delta_se": t[v]["delta_se"],
                    "top1_agreement_vs_fp32": t[v]["top1_agreement"],
                    "max_abs_logit_diff_vs_fp32": t[v]["max_abs_logit_diff"],
                    "kept_counts_equal_vs_fp32": t[v]["kept_counts_equal"],
                }
                for v in VARIANTS[1:]
            },
        }
    return out


def run_task(name: str, model_dir: Path, data: Path, args: argparse.Namespace) -> dict:
    model = load_model(model_dir)
    task = load_task(name, model_dir, data, args.max_samples, args.calib_samples, model)
    reducers = {"dense": DenseReducer(), "sttabt": make_sttabt(model, args.approx, args.keep_ratio)}
    with tempfile.TemporaryDirectory(prefix="export-parity-") as work:
        files, info = export_all(model, reducers, task, Path(work), args.quantize_approx, args.calibration)
        t0 = time.perf_counter()
        results = evaluate_all(model, reducers, files, task, args.batch_size, args.threads)
    for method in reducers:
        results[method]["files"] = info[method]
    return {
        "task": name,
        "model": str(model_dir),
        "data": str(data),
        "samples": len(task.examples),
        "calibration_samples": len(task.calib),
        "calibration_samples_in_eval_set": int(task.in_calib.sum()),
        "note": "fp32 parity over every sample; int8 metrics leave the calibration samples out",
        "keep_ratio": args.keep_ratio,
        "approx": str(args.approx)
        if args.approx
        else "UNTRAINED interpolate init /4 (token choices not distilled)",
        "int8_approxnet": "int8 too (--quantize-approx)"
        if args.quantize_approx
        else "matmuls kept fp32, embedding tables 8-bit (default)",
        "static_calibration": args.calibration,
        "eval_s": time.perf_counter() - t0,
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument(
        "--model", type=Path, default=None, help="override the model dir (with one --tasks entry)"
    )
    ap.add_argument("--data", type=Path, default=None, help="override the data path (with one --tasks entry)")
    ap.add_argument("--approx", type=Path, default=None, help="trained ApproxNet dir (default: untrained /4)")
    ap.add_argument("--keep-ratio", type=float, default=0.3)
    ap.add_argument(
        "--quantize-approx", action="store_true", help="INT8 the ApproxNet too (the default keeps it fp32)"
    )
    ap.add_argument(
        "--calibration",
        choices=["minmax", "percentile"],
        default="minmax",
        help="static INT8 activation ranges",
    )
    ap.add_argument("--max-samples", type=int, default=None)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    if (args.model or args.data) and len(args.tasks) != 1:
        ap.error("--model/--data override one task: pass a single --tasks entry")
    torch.set_num_threads(args.threads)
    for name in args.tasks:
        model_dir, data = args.model or TASKS[name][0], args.data or TASKS[name][1]
        payload = {
            "env": {**environment(), "onnxruntime": onnxruntime.__version__},
            **run_task(name, model_dir, data, args),
        }
        suffix = (
            (f"_n{args.max_samples}" if args.max_samples else "")
            + ("_int8approx" if args.quantize_approx else "")
            + ("" if args.calibration == "minmax" else f"_{args.calibration}")
        )
        write_json(args.out_dir / f"export_parity_{name}{suffix}.json", payload)
        print(f"{name}: wrote {args.out_dir / f'export_parity_{name}{suffix}.json'}")
        for method, res in payload["results"].items():
            print(f"  {method} fp32: {res['onnx_fp32']}")
            print(f"  {method} int8: dynamic {res['int8-dynamic']} | static {res['int8-static']}")


if __name__ == "__main__":
    quiet_third_party()
    main()
