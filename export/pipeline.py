"""What ``sttabt-edge export`` does, as one tested function: build, export, verify, quantize, time.

Without ``--approx`` an STTABT export gets an UNTRAINED ApproxNet (interpolation init from
the teacher's weights): the graph has the right shape and cost, so latency numbers are
meaningful, but its token choices are not those of a distilled ApproxNet. A loud warning
is emitted (the CLI asks for ``--approx untrained`` explicitly). Without ``--calib`` the export
is verified on synthetic inputs (also warned).

With ``fuse`` the verified fp32 file is rewritten in place on ONNX Runtime's fused kernels
(``export/fusion.py``; parity-checked against the unfused graph), before INT8 quantizes it.

With ``quantize`` the file at ``out`` is the INT8 one, the file the user asked for; the
verified fp32 graph it was quantized from is kept beside it as ``<stem>.fp32<suffix>`` (the
summary's ``files`` lists everything written).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sttabt_edge.errors import InputError
from sttabt_edge.export import ort as ort_utils
from sttabt_edge.export.graph import family_io
from sttabt_edge.export.metadata import hf_config
from sttabt_edge.export.onnx import Batch, OnnxOptions, export_onnx, first_sample
from sttabt_edge.export.profile import model_feeds, pipeline_latency
from sttabt_edge.export.request import QUANTIZE, ExportRequest, check_request
from sttabt_edge.export.summary import ExportSummary, KeptSummary, WrittenFiles
from sttabt_edge.model_info import is_trained_dir, model_files
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.sparse_model import SparseClassifier

log = logging.getLogger(__name__)
Warn = Callable[[str], None]


def build_reducer(model: nn.Module, req: ExportRequest, warn: Warn) -> Reducer:
    """The request's reducer for ``model`` (a plain model: the request carries its spec)."""
    from sttabt_edge.reducers.factory import build, takes_approx

    spec = req.reducer
    if spec is None:
        raise InputError(f"--model {req.source.model} is no trained dir: the request needs a reducer spec")
    if not takes_approx(spec):
        return build(spec)
    from sttabt_edge.method.approxnet import ApproxNet, build_approxnet

    if req.source.approx_net is not None:
        approx = req.source.approx_net
    elif req.source.approx is not None:
        approx = ApproxNet.load(req.source.approx, model.config)
    else:
        warn(
            f"UNTRAINED ApproxNet (interpolate init, factor {req.source.approx_factor}): latency is representative; "
            "token selection and accuracy are NOT. Distil one (`sttabt-edge train approx`), pass --approx DIR."
        )
        approx = build_approxnet(
            model, req.source.approx_factor, "interpolate", heads=req.source.approx_heads
        )
    return build(spec, approx.eval())


def calibration_batch(
    sc: SparseClassifier, req: ExportRequest, warn: Warn
) -> tuple[dict[str, torch.Tensor], str]:
    """The first ``calib_samples`` examples of an image folder or GLUE TSV, preprocessed like eval."""
    model, family = sc.model, sc.parts.family
    n = req.verify.calib_samples
    if n < 1:
        raise InputError(f"--calib-samples must be >= 1, got {n}")
    if req.verify.calib is None:
        warn("no --calib data: verifying the export on SYNTHETIC inputs; pass real data for a real check")
        return synthetic_batch(model, family, n), "synthetic"
    from sttabt_edge.data import batches, glue_tsv, image_folder, image_preprocess_for
    from sttabt_edge.runtime import TextPreprocess

    if not family_io(family).text:
        if not req.verify.calib.is_dir():
            raise InputError(f"--calib for an image model must be an image folder, got {req.verify.calib}")
        examples = image_folder(req.verify.calib)[:n]
        arrays, _ = next(batches(examples, n, image=image_preprocess_for(model)))
    else:
        tok = model_files(req.source.model) / "tokenizer.json"
        if not req.verify.calib.is_file() or not tok.is_file():
            raise InputError(f"--calib for a text model must be a GLUE TSV file and {tok} must exist")
        examples = glue_tsv(req.verify.calib)[:n]
        limit = int(hf_config(model).max_position_embeddings)
        if req.graph.target == "tflite":  # the static length; the tokenizer truncates keeping [SEP]
            limit = min(limit, req.graph.seq_len)
        arrays, _ = next(batches(examples, n, text=TextPreprocess.from_file(tok), max_length=limit))
    return {k: torch.from_numpy(v) for k, v in arrays.items()}, str(req.verify.calib)


def synthetic_batch(model: nn.Module, family: str, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random pixels, or random token ids with varied lengths (right padding, real first token)."""
    g = torch.Generator().manual_seed(seed)
    cfg = hf_config(model)
    if not family_io(family).text:
        size = int(cfg.image_size)
        return {"pixel_values": torch.randn(n, 3, size, size, generator=g)}
    width = min(32, int(cfg.max_position_embeddings))
    lengths = torch.randint(max(2, width // 3), width + 1, (n,), generator=g)
    lengths[0] = width
    mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).long()  # (n, width)
    ids = torch.randint(1, int(cfg.vocab_size), (n, width), generator=g) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def load_source(req: ExportRequest, warn: Warn) -> SparseClassifier:
    """The SparseClassifier to export: a ``train concrete|baseline`` output brings its fine-tuned model and
    trained reducer (ApproxNet, thresholds, schedule); a dense model gets the reducer the request names."""
    from sttabt_edge.models.loading import load_model
    from sttabt_edge.train.artifacts import load_sttabt

    if is_trained_dir(req.source.model):
        if req.source.approx is not None:
            raise InputError(
                f"--model {req.source.model} is a trained STTABT dir with its own ApproxNet; drop --approx"
            )
        sc = load_sttabt(req.source.model)
        if req.reducer is not None and sc.reducer.spec() != req.reducer:
            raise InputError(
                f"--model {req.source.model}: the request's reducer is not the trained dir's own"
            )
        return sc
    model = load_model(req.source.model)
    return SparseClassifier(model, build_reducer(model, req, warn))


def approx_record(req: ExportRequest) -> dict[str, Any] | None:
    """How `verify` can rebuild the export's ApproxNet: a saved dir, or the deterministic untrained init."""
    from sttabt_edge.reducers.factory import takes_approx
    from sttabt_edge.train.artifacts import APPROX_DIR

    none = {"source": None, "init": None, "factor": None, "seed": None, "heads": None}
    if is_trained_dir(req.source.model):
        approx = Path(req.source.model) / APPROX_DIR
        return {**none, "source": str(approx.resolve())} if approx.is_dir() else None
    if req.reducer is None or not takes_approx(req.reducer):
        return None
    if req.source.approx is not None:
        return {**none, "source": str(Path(req.source.approx).resolve())}
    return {
        **none,
        "init": "interpolate",
        "factor": req.source.approx_factor,
        "seed": 0,
        "heads": req.source.approx_heads,
    }


def run_export(req: ExportRequest, warn: Warn = log.warning) -> ExportSummary:
    """Export + verification + optional INT8 + latency breakdown; returns the summary."""

    check_request(req)
    sc = load_source(req, warn)
    calib, calib_src = calibration_batch(sc, req, warn)
    if req.graph.target == "tflite":
        return run_export_tflite(req, sc, calib, calib_src)
    kwargs: OnnxOptions = {
        "batch": req.graph.batch,
        "opset": req.graph.opset,
        "dynamo": req.graph.dynamo,
        "simplify": req.graph.simplify,
    }
    tokenizer = _tokenizer(req.source.model)
    result = export_onnx(
        sc,
        fp32_sibling(req.out) if req.quantize.mode else req.out,
        example_inputs=calib,
        metadata={"source_model": req.source.model, "approx": approx_record(req)},
        tokenizer_file=tokenizer,
        **kwargs,
    )
    path, report = result.path, result.parity.to_dict()
    summary: ExportSummary = {
        "out": str(req.out),
        "method": sc.reducer.name,
        "batch": req.graph.batch,
        "exporter": "dynamo" if req.graph.dynamo else "legacy (TorchScript)",
        "opset": req.graph.opset,
        "calibration": calib_src,
        "parity": {k: v for k, v in report.items() if k != "kept_counts"},
        **kept_summary(report["kept_counts"], sc, calib),
        "flops": analytic_flops(sc, calib),
    }
    sample = timing_sample(calib, req.graph.batch)
    summary["attention_widths_sample0"] = ort_utils.softmax_widths(path, model_feeds(sc, sample))
    if req.graph.fuse:  # after the widths: a fused file has no main-model Softmax left to measure
        summary["fusion"] = _fuse(sc, path, calib, req.graph.batch)
    summary["ort_nodes"] = ort_utils.optimized_node_counts(path)
    int8 = None
    if req.quantize.mode:
        summary["quantization"] = _quantize(sc, path, req.out, QUANTIZE[req.quantize.mode], calib)
        int8 = req.out
    summary.update(written_files(req.out, path, tokenizer is not None))
    if req.verify.latency_runs > 0:
        fuse = (lambda p: _fuse(sc, p, calib, req.graph.batch)) if req.graph.fuse else None
        summary["latency_ms"] = pipeline_latency(
            sc,
            path,
            sample,
            calib,
            kwargs,
            tokenizer,
            fuse,
            runs=req.verify.latency_runs,
            threads=req.verify.threads,
            int8=int8,
        )
        summary["latency_note"] = (
            f"batch 1, onnxruntime {req.verify.threads} threads, spinning off, median of {req.verify.latency_runs} runs, "
            "each graph in its own session, one after another"
        )
        if req.graph.fuse:
            summary["latency_note"] += (
                "; --fuse: the pipeline and dense graphs are fused, STTABT's stage graphs "
                "(approxnet, masks, sparse_model) are not"
            )
    return summary


def run_export_tflite(
    req: ExportRequest, sc: SparseClassifier, calib: Mapping[str, torch.Tensor], calib_src: str
) -> ExportSummary:
    """Static batch-1 .tflite (fixed per-layer counts), verified in the LiteRT interpreter; ``req``
    already checked (:func:`check_request`, as :func:`run_export` does first)."""
    from sttabt_edge.export.tflite import export_tflite, quantize_tflite, read_sidecar

    io = family_io(sc.parts.family)
    if io.variable_length:  # synthetic batches may exceed the static length; real ones are tokenized to it
        calib = {k: v[:, : req.graph.seq_len] for k, v in calib.items()}
    path = export_tflite(
        sc,
        fp32_sibling(req.out) if req.quantize.mode else req.out,
        example_inputs=calib,
        metadata={"source_model": req.source.model, "approx": approx_record(req)},
        seq_len=req.graph.seq_len if io.variable_length else None,
        tokenizer_file=_tokenizer(req.source.model),
        slots=req.graph.slots or "calibrated",
        slot_quantile=req.graph.slot_quantile,
    )
    side = read_sidecar(path)
    summary: ExportSummary = {
        "out": str(req.out),
        "method": sc.reducer.name,
        "target": "tflite",
        "calibration": calib_src,
        "tflite": {k: v for k, v in side["tflite"].items() if k != "verification"},
        "parity": side["tflite"].get("verification"),
    }
    if req.quantize.mode:
        report = quantize_tflite(
            path, req.out, sc=sc, inputs=calib, approx_weights=req.quantize.approx_weights
        )
        sizes = {"fp32_bytes": path.stat().st_size, "int8_bytes": req.out.stat().st_size}
        summary["quantization"] = {"mode": "dynamic-range", **report, **sizes}
        summary["quantization"]["approx_weights"] = read_sidecar(req.out)["tflite"]["approx_weights"]
    summary.update(written_files(req.out, path, io.text, sidecar=True))
    return summary


def fp32_sibling(out: Path) -> Path:
    """Where a quantized export keeps its verified fp32 graph: ``X.onnx`` -> ``X.fp32.onnx``."""
    return out.with_name(f"{out.stem}.fp32{out.suffix}")


def written_files(out: Path, fp32: Path, text: bool, sidecar: bool = False) -> WrittenFiles:
    """``size_mb`` of ``out`` and every file the export wrote (``out`` first), so nothing lands unannounced."""
    from sttabt_edge.export.metadata import tokenizer_name

    files = [out] if fp32 == out else [out, fp32]
    extras = [f.with_name(f.name + ".json") for f in files] if sidecar else []
    extras += [f.with_name(tokenizer_name(f.stem)) for f in files] if text else []
    return {"size_mb": out.stat().st_size / 2**20, "files": [str(f) for f in files + extras]}


def kept_summary(
    kept_counts: list[list[int]], sc: SparseClassifier, calib: Mapping[str, torch.Tensor]
) -> KeptSummary:
    """Mean real tokens entering each layer vs the mean real length (what the export keeps)."""
    from sttabt_edge.models.adapter import embed

    with torch.no_grad():
        _, pad = embed(sc.parts, calib)  # (B, N) real-token mask, for either family
    kept = np.asarray(kept_counts, dtype=np.float64)  # (B, L)
    return {
        "kept_tokens_per_layer_mean": [round(v, 2) for v in kept.mean(0).tolist()],
        "real_tokens_mean": float(pad.sum(1).double().mean()),
    }


def analytic_flops(sc: SparseClassifier, calib: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Mean analytic GFLOPs per example of the exported method (incl. ApproxNet and back-tracking)
    and of the dense model on the calibration batch, and their ratio."""
    from sttabt_edge.method.flops import dense_flops, flops_summary, output_flops

    with torch.no_grad():
        out = sc(**calib)
    dense = dense_flops(sc.parts, out.pad_mask.sum(dim=1))
    return flops_summary(output_flops(sc.parts, out, sc.reducer, calib), dense)


def _tokenizer(model: str) -> Path | None:
    tok = model_files(model) / "tokenizer.json"
    return tok if tok.is_file() else None


def timing_sample(calib: Mapping[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
    """One example (text: its real length); repeated to N rows for a graph with a fixed batch N."""
    one = first_sample(calib)
    return (
        one
        if batch == "dynamic"
        else {k: v.repeat(int(batch), *([1] * (v.dim() - 1))) for k, v in one.items()}
    )


def _quantize(
    sc: SparseClassifier, path: Path, out: Path, mode: str, calib: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    from sttabt_edge.export.quantize import quantize_onnx

    return quantize_onnx(path, out, mode, model_feeds(sc, calib)).to_dict()


def _fuse(
    sc: SparseClassifier, path: Path, calib: Mapping[str, torch.Tensor], batch: Batch
) -> dict[str, Any]:
    """Fuse the verified file in place, checked against it on the sets it was verified on."""
    from sttabt_edge.export.fusion import fuse_onnx

    sets = [calib, first_sample(calib)] if batch == "dynamic" else [calib]
    return fuse_onnx(path, path, check_inputs=[model_feeds(sc, s) for s in sets], record=True).to_dict()
