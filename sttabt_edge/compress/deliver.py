"""The end of ``compress``: export the chosen point and the dense baseline, verify, measure.

Layout of ``--out``: ``model.onnx`` (INT8 with ``--quantize int8``; then fp32 at
``model.fp32.onnx``, the layout of ``sttabt-edge export``), ``baseline/dense.onnx`` likewise,
``approx/`` (the distilled ApproxNet), ``sttabt/`` (the trained dir, when thresholds were trained),
``bench_inputs.txt`` (the held-out inputs the latency benchmark ran).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sttabt_edge.compress import stages
from sttabt_edge.compress.config import CompressConfig
from sttabt_edge.compress.search import Point
from sttabt_edge.export.summary import ExportSummary
from sttabt_edge.verify import Tolerance

if TYPE_CHECKING:
    from torch import nn

    from sttabt_edge.reducers.spec import ReducerSpec

log = logging.getLogger("sttabt_edge.compress")
# INT8 cannot equal fp32 logits: it must agree on the answers. Its ApproxNet embeddings are 8-bit too
# (the CLI's default, docs/int8.md), so a token choice may differ: kept-count agreement is reported, not required.
INT8_TOLERANCE = Tolerance(max_abs_logit=2.0, min_top1_agreement=0.95, min_kept_agreement=0.0)
VERIFY_EXAMPLES = 256
BENCH_INPUTS = 256  # held-out inputs the latency benchmark takes in turn


def calib_path(cfg: CompressConfig) -> Path:
    """The file/folder the exporter checks its graph on: the training TSV or the image folder."""
    data = Path(cfg.data)
    if data.is_dir() and (data / "train.tsv").is_file():
        return data / "train.tsv"
    return data


def _export(
    cfg: CompressConfig,
    model: str,
    out: Path,
    reducer: ReducerSpec | None,
    approx: Path | None = None,
    approx_net: nn.Module | None = None,
) -> ExportSummary:
    """One export of the chosen reducer (None: the trained dir's own), with the ApproxNet compress
    already holds (``approx_net``, loaded from ``approx``, the dir the export records)."""
    from sttabt_edge.export.pipeline import run_export
    from sttabt_edge.export.request import (
        ExportRequest,
        GraphOptions,
        ModelSource,
        QuantizeOptions,
        VerifyOptions,
    )

    req = ExportRequest(
        source=ModelSource(model=model, approx=approx, approx_net=approx_net),
        out=out,
        reducer=reducer,
        graph=GraphOptions(target=cfg.delivery.target, seq_len=cfg.batch.max_length, fuse=cfg.delivery.fuse),
        quantize=QuantizeOptions(mode=cfg.delivery.quantize),
        verify=VerifyOptions(
            calib=calib_path(cfg), calib_samples=16, latency_runs=0, threads=cfg.bench.threads
        ),
    )
    return run_export(req, warn=log.warning)


def files_of(cfg: CompressConfig, out: Path) -> dict[str, Path]:
    """{"fp32": ..., "int8": ...} of one export (``int8`` only with --quantize)."""
    from sttabt_edge.export.pipeline import fp32_sibling

    return {"fp32": fp32_sibling(out), "int8": out} if cfg.delivery.quantize else {"fp32": out}


def deliver(
    cfg: CompressConfig,
    net: Any,
    approx: nn.Module,
    chosen: Point,
    split: stages.Split,
    report: dict[str, Any],
) -> dict[str, Any]:
    """Export ``chosen`` (with ``approx``, the ApproxNet of ``report["approx"]["dir"]``) and the dense
    model, verify both files against PyTorch and measure their accuracy through the runtime."""
    from sttabt_edge.reducers.spec import DenseSpec, SttabtSpec
    from sttabt_edge.runtime import load
    from sttabt_edge.sparse_model import SparseClassifier
    from sttabt_edge.train.artifacts import load_sttabt, trained_spec
    from sttabt_edge.verify import reference_reducer, verify

    suffix = ".onnx" if cfg.delivery.target == "onnx" else ".tflite"
    model_out, dense_out = cfg.out / f"model{suffix}", cfg.out / "baseline" / f"dense{suffix}"
    dense_out.parent.mkdir(parents=True, exist_ok=True)
    if chosen.kind == "concrete":  # the trained dir: its model, thresholds and ApproxNet
        trained = cfg.out / "sttabt"
        ref_model = load_sttabt(trained).model
        sttabt = _export(cfg, str(trained), model_out, trained_spec(trained))
    else:  # the searched keep ratio, on the ApproxNet compress distilled (or was given)
        ref_model = net
        spec = SttabtSpec(keep_ratio=chosen.keep_ratio)
        sttabt = _export(cfg, cfg.model, model_out, spec, Path(report["approx"]["dir"]), approx)
    exports = {"sttabt": sttabt, "dense": _export(cfg, cfg.model, dense_out, DenseSpec())}
    held = split.held[:VERIFY_EXAMPLES]
    out: dict[str, Any] = {"export": {k: _brief(v) for k, v in exports.items()}, "verify": {}, "accuracy": {}}
    paths = {
        f"{m}_{kind}": p
        for m, o in (("sttabt", model_out), ("dense", dense_out))
        for kind, p in files_of(cfg, o).items()
    }
    for name, path in paths.items():
        pred = load(path)
        model = ref_model if name.startswith("sttabt") else net
        tol = INT8_TOLERANCE if name.endswith("int8") else Tolerance()
        rep = verify(
            pred,
            SparseClassifier(model, reference_reducer(pred.metadata.raw, model)),
            held,
            tolerance=tol,
            task=split.data.task,
        )
        out["verify"][name] = {**rep.to_dict(), "tolerance": vars(tol)}
        out["accuracy"][name] = {"held_out": stages.runtime_accuracy(path, split.held)}
        if split.report:
            out["accuracy"][name]["report"] = stages.runtime_accuracy(path, split.report)
    out["paths"] = {k: str(v) for k, v in paths.items()}
    out["passed"] = all(v["passed"] for v in out["verify"].values())
    return out


def _brief(summary: ExportSummary) -> dict[str, Any]:
    keys = (
        "out",
        "method",
        "parity",
        "flops",
        "quantization",
        "fusion",
        "files",
        "kept_tokens_per_layer_mean",
    )
    full: dict[str, Any] = dict(summary)
    return {k: full[k] for k in keys if k in full}


def benchmark(cfg: CompressConfig, split: stages.Split, files: dict[str, Any]) -> dict[str, Any]:
    """Batch-1 latency pairs (block alternation, worker processes, as ``sttabt-edge bench --vs``)."""
    from sttabt_edge.runtime.bench import bench_pairs
    from sttabt_edge.runtime.bench_inputs import write_text_inputs

    paths = files["paths"]
    pairs = [("sttabt_fp32", "dense_fp32")]
    if cfg.delivery.quantize:
        pairs += [("dense_int8", "dense_fp32"), ("sttabt_int8", "dense_fp32"), ("sttabt_int8", "dense_int8")]
    # the held-out inputs themselves, taken in turn: a pruned model's latency depends on how many
    # tokens its thresholds keep for real inputs, which synthetic text or noise images do not show
    inputs = write_text_inputs([e.inputs for e in split.held[:BENCH_INPUTS]], cfg.out / "bench_inputs.txt")
    res: dict[str, Any] = {
        "seq_len": None,
        "threads": cfg.bench.threads,
        "runs": cfg.bench.runs,
        "block": 5,
    }
    res["pairs"] = bench_pairs(
        {k: Path(v) for k, v in paths.items()},
        pairs,
        threads=cfg.bench.threads,
        runs=cfg.bench.runs,
        warmup=5,
        seq_len=128,  # unused with real inputs
        block=5,
        inputs=inputs,
    )
    first = next(iter(res["pairs"].values()))["inputs"]
    res["inputs"] = {**first, "source": inputs.name}  # relative to --out: the report moves with it
    return res
