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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from sttabt_edge.defaults import APPROX_FACTOR, APPROX_HEADS
from sttabt_edge.errors import InputError
from sttabt_edge.export import ort as ort_utils
from sttabt_edge.export.graph import family_io
from sttabt_edge.export.metadata import hf_config
from sttabt_edge.export.onnx import Batch, OnnxOptions, export_onnx, first_sample
from sttabt_edge.export.profile import model_feeds, pipeline_latency
from sttabt_edge.export.summary import ExportSummary, KeptSummary, WrittenFiles
from sttabt_edge.export.tflite_graph import APPROX_WEIGHTS_DEFAULT, ApproxWeights
from sttabt_edge.export.tflite_slots import SLOT_QUANTILE, SLOT_SIZINGS, SlotSizing
from sttabt_edge.model_info import is_trained_dir, model_files
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.spec import ReducerSpec, Target
from sttabt_edge.sparse_model import SparseClassifier

log = logging.getLogger(__name__)
Warn = Callable[[str], None]
QuantizeMode = Literal["int8", "int8-dynamic", "int8-static"]
QUANTIZE: dict[QuantizeMode, str] = {"int8": "dynamic", "int8-dynamic": "dynamic", "int8-static": "static"}


@dataclass
class ExportRequest:
    model: str
    out: Path
    # the reducer, built once where the input enters (the CLI's options via spec_from_options, a
    # trained dir's metadata, compress's choice); None: a trained dir's own
    reducer: ReducerSpec | None = None
    approx: Path | None = None  # STTABT's ApproxNet dir (loaded from there unless approx_net; recorded)
    approx_net: nn.Module | None = None  # the ApproxNet already loaded from ``approx`` (compress)
    approx_factor: int = APPROX_FACTOR  # only for the untrained fallback
    approx_heads: int | None = APPROX_HEADS  # only for the untrained fallback (None: the model's)
    target: Target = "onnx"
    seq_len: int = 128  # tflite text models: the static sequence length
    slots: SlotSizing | None = None  # tflite STTABT static sizes; None: "calibrated" (export/tflite_slots.py)
    slot_quantile: float = SLOT_QUANTILE  # "calibrated": the quantile of the rule's sizes on --calib
    quantize: QuantizeMode | None = None  # "int8" = "int8-dynamic"
    approx_weights: ApproxWeights = APPROX_WEIGHTS_DEFAULT  # tflite int8: the ApproxNet's stored weights
    batch: Batch = "dynamic"
    calib: Path | None = None
    calib_samples: int = 16
    opset: int = 17
    dynamo: bool = False
    simplify: bool = True
    latency_runs: int = 20  # 0: skip the latency breakdown
    threads: int = 2
    fuse: bool = False  # com.microsoft contrib ops (export/fusion.py); off: some mobile ORT builds lack them


def build_reducer(model: nn.Module, req: ExportRequest, warn: Warn) -> Reducer:
    """The request's reducer for ``model`` (a plain model: the request carries its spec)."""
    from sttabt_edge.reducers.factory import build, takes_approx

    spec = req.reducer
    if spec is None:
        raise InputError(f"--model {req.model} is no trained dir: the request needs a reducer spec")
    if not takes_approx(spec):
        return build(spec)
    from sttabt_edge.method.approxnet import ApproxNet, build_approxnet

    if req.approx_net is not None:
        approx = req.approx_net
    elif req.approx is not None:
        approx = ApproxNet.load(req.approx, model.config)
    else:
        warn(
            f"UNTRAINED ApproxNet (interpolate init, factor {req.approx_factor}): latency is representative; "
            "token selection and accuracy are NOT. Distil one (`sttabt-edge train approx`), pass --approx DIR."
        )
        approx = build_approxnet(model, req.approx_factor, "interpolate", heads=req.approx_heads)
    return build(spec, approx.eval())


def calibration_batch(
    sc: SparseClassifier, req: ExportRequest, warn: Warn
) -> tuple[dict[str, torch.Tensor], str]:
    """The first ``calib_samples`` examples of an image folder or GLUE TSV, preprocessed like eval."""
    model, family = sc.model, sc.parts.family
    n = req.calib_samples
    if n < 1:
        raise InputError(f"--calib-samples must be >= 1, got {n}")
    if req.calib is None:
        warn("no --calib data: verifying the export on SYNTHETIC inputs; pass real data for a real check")
        return synthetic_batch(model, family, n), "synthetic"
    from sttabt_edge.data import batches, glue_tsv, image_folder, image_preprocess_for
    from sttabt_edge.runtime import TextPreprocess

    if not family_io(family).text:
        if not req.calib.is_dir():
            raise InputError(f"--calib for an image model must be an image folder, got {req.calib}")
        examples = image_folder(req.calib)[:n]
        arrays, _ = next(batches(examples, n, image=image_preprocess_for(model)))
    else:
        tok = model_files(req.model) / "tokenizer.json"
        if not req.calib.is_file() or not tok.is_file():
            raise InputError(f"--calib for a text model must be a GLUE TSV file and {tok} must exist")
        examples = glue_tsv(req.calib)[:n]
        limit = int(hf_config(model).max_position_embeddings)
        if req.target == "tflite":  # the static length; the tokenizer truncates keeping [SEP]
            limit = min(limit, req.seq_len)
        arrays, _ = next(batches(examples, n, text=TextPreprocess.from_file(tok), max_length=limit))
    return {k: torch.from_numpy(v) for k, v in arrays.items()}, str(req.calib)


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

    if is_trained_dir(req.model):
        if req.approx is not None:
            raise InputError(
                f"--model {req.model} is a trained STTABT dir with its own ApproxNet; drop --approx"
            )
        sc = load_sttabt(req.model)
        if req.reducer is not None and sc.reducer.spec() != req.reducer:
            raise InputError(f"--model {req.model}: the request's reducer is not the trained dir's own")
        return sc
    model = load_model(req.model)
    return SparseClassifier(model, build_reducer(model, req, warn))


def approx_record(req: ExportRequest) -> dict[str, Any] | None:
    """How `verify` can rebuild the export's ApproxNet: a saved dir, or the deterministic untrained init."""
    from sttabt_edge.reducers.factory import takes_approx
    from sttabt_edge.train.artifacts import APPROX_DIR

    none = {"source": None, "init": None, "factor": None, "seed": None, "heads": None}
    if is_trained_dir(req.model):
        approx = Path(req.model) / APPROX_DIR
        return {**none, "source": str(approx.resolve())} if approx.is_dir() else None
    if req.reducer is None or not takes_approx(req.reducer):
        return None
    if req.approx is not None:
        return {**none, "source": str(Path(req.approx).resolve())}
    return {**none, "init": "interpolate", "factor": req.approx_factor, "seed": 0, "heads": req.approx_heads}


def check_request(req: ExportRequest) -> None:
    """Everything that can be wrong with a request without loading the model: fail before the load."""
    suffix = {"onnx": ".onnx", "tflite": ".tflite"}.get(req.target)
    if suffix is None:
        raise InputError(f"--target must be onnx or tflite, got {req.target!r}")
    if req.out.suffix != suffix:
        raise InputError(
            f"--out {req.out}: a {req.target} export is a {suffix} file (the runtime goes by the suffix)"
        )
    if req.quantize is not None and req.quantize not in QUANTIZE:
        raise InputError(f"--quantize must be one of {sorted(QUANTIZE)}, got {req.quantize!r}")
    if req.calib_samples < 1:
        raise InputError(f"--calib-samples must be >= 1, got {req.calib_samples}")
    if req.calib is not None and not req.calib.exists():
        raise InputError(f"--calib {req.calib}: no such file or folder")
    if req.reducer is None and not is_trained_dir(req.model):  # a trained dir brings its own reducer
        raise InputError(f"--model {req.model} is no trained dir: the request needs a reducer spec")
    if req.approx_net is not None and req.approx is None:
        raise InputError("a loaded ApproxNet (approx_net) needs the dir it was loaded from (approx)")
    if req.slots is not None and (req.target != "tflite" or req.slots not in SLOT_SIZINGS):
        raise InputError(
            f"--slots {req.slots} applies to --target tflite, one of {', '.join(SLOT_SIZINGS)} "
            "(ONNX runs every layer on its data-dependent count)"
        )
    if not 0.0 < req.slot_quantile <= 1.0:
        raise InputError(f"the slot quantile must be in (0, 1], got {req.slot_quantile:g}")
    if req.target == "tflite":
        if req.fuse:
            raise InputError("--fuse is ONNX-only (it writes ONNX Runtime contrib ops)")
        if req.batch not in ("dynamic", 1):
            raise InputError("TFLite exports have a static batch of 1 (the runtime runs a batch row by row)")
        if req.quantize == "int8-static":
            raise InputError(
                "TFLite supports --quantize int8 (dynamic-range weights); int8-static is ONNX-only"
            )


def run_export(req: ExportRequest, warn: Warn = log.warning) -> ExportSummary:
    """Export + verification + optional INT8 + latency breakdown; returns the summary."""

    check_request(req)
    sc = load_source(req, warn)
    calib, calib_src = calibration_batch(sc, req, warn)
    if req.target == "tflite":
        return run_export_tflite(req, sc, calib, calib_src)
    kwargs: OnnxOptions = {
        "batch": req.batch,
        "opset": req.opset,
        "dynamo": req.dynamo,
        "simplify": req.simplify,
    }
    tokenizer = _tokenizer(req.model)
    result = export_onnx(
        sc,
        fp32_sibling(req.out) if req.quantize else req.out,
        example_inputs=calib,
        metadata={"source_model": req.model, "approx": approx_record(req)},
        tokenizer_file=tokenizer,
        **kwargs,
    )
    path, report = result.path, result.parity.to_dict()
    summary: ExportSummary = {
        "out": str(req.out),
        "method": sc.reducer.name,
        "batch": req.batch,
        "exporter": "dynamo" if req.dynamo else "legacy (TorchScript)",
        "opset": req.opset,
        "calibration": calib_src,
        "parity": {k: v for k, v in report.items() if k != "kept_counts"},
        **kept_summary(report["kept_counts"], sc, calib),
        "flops": analytic_flops(sc, calib),
    }
    sample = timing_sample(calib, req.batch)
    summary["attention_widths_sample0"] = ort_utils.softmax_widths(path, model_feeds(sc, sample))
    if req.fuse:  # after the widths: a fused file has no main-model Softmax left to measure
        summary["fusion"] = _fuse(sc, path, calib, req.batch)
    summary["ort_nodes"] = ort_utils.optimized_node_counts(path)
    int8 = None
    if req.quantize:
        summary["quantization"] = _quantize(sc, path, req.out, QUANTIZE[req.quantize], calib)
        int8 = req.out
    summary.update(written_files(req.out, path, tokenizer is not None))
    if req.latency_runs > 0:
        fuse = (lambda p: _fuse(sc, p, calib, req.batch)) if req.fuse else None
        summary["latency_ms"] = pipeline_latency(
            sc,
            path,
            sample,
            calib,
            kwargs,
            tokenizer,
            fuse,
            runs=req.latency_runs,
            threads=req.threads,
            int8=int8,
        )
        summary["latency_note"] = (
            f"batch 1, onnxruntime {req.threads} threads, spinning off, median of {req.latency_runs} runs, "
            "each graph in its own session, one after another"
        )
        if req.fuse:
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
        calib = {k: v[:, : req.seq_len] for k, v in calib.items()}
    path = export_tflite(
        sc,
        fp32_sibling(req.out) if req.quantize else req.out,
        example_inputs=calib,
        metadata={"source_model": req.model, "approx": approx_record(req)},
        seq_len=req.seq_len if io.variable_length else None,
        tokenizer_file=_tokenizer(req.model),
        slots=req.slots or "calibrated",
        slot_quantile=req.slot_quantile,
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
    if req.quantize:
        report = quantize_tflite(path, req.out, sc=sc, inputs=calib, approx_weights=req.approx_weights)
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
