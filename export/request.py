"""What one export is asked to do: a frozen request grouped by concern, and its checks.

The CLI (``sttabt_edge/cli.py:export_cmd``), ``compress`` and the benchmarks each fill one request
in one place; :func:`check_request` refuses a bad one before the model loads. The groups keep a
caller from mixing concerns (a timing option beside a graph option) and let each concern grow
without the request growing flat again: the model and its ApproxNet (:class:`ModelSource`), the
reducer (a ``ReducerSpec``, built once where the input enters), the graph (:class:`GraphOptions`),
INT8 (:class:`QuantizeOptions`) and how the file is checked and timed (:class:`VerifyOptions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

from torch import nn

from sttabt_edge.defaults import APPROX_FACTOR, APPROX_HEADS
from sttabt_edge.errors import InputError
from sttabt_edge.export.onnx import Batch
from sttabt_edge.export.tflite_graph import APPROX_WEIGHTS_DEFAULT, ApproxWeights
from sttabt_edge.export.tflite_slots import SLOT_QUANTILE, SLOT_SIZINGS, SlotSizing
from sttabt_edge.model_info import is_trained_dir
from sttabt_edge.reducers.spec import ReducerSpec, Target

QuantizeMode: TypeAlias = Literal["int8", "int8-dynamic", "int8-static"]
QUANTIZE: dict[QuantizeMode, str] = {"int8": "dynamic", "int8-dynamic": "dynamic", "int8-static": "static"}


@dataclass(frozen=True)
class ModelSource:
    """The model to export and, for STTABT, where its ApproxNet comes from."""

    model: str  # a model dir, alias or hub id, or a ``train concrete|baseline`` dir (its own reducer)
    approx: Path | None = None  # STTABT's ApproxNet dir (loaded from there unless approx_net; recorded)
    approx_net: nn.Module | None = None  # the ApproxNet already loaded from ``approx`` (compress)
    approx_factor: int = APPROX_FACTOR  # only for the untrained fallback
    approx_heads: int | None = APPROX_HEADS  # only for the untrained fallback (None: the model's)


@dataclass(frozen=True)
class GraphOptions:
    """The file's format and how its graph is built."""

    target: Target = "onnx"
    seq_len: int = 128  # tflite text models: the static sequence length
    slots: SlotSizing | None = None  # tflite STTABT static sizes; None: "calibrated" (export/tflite_slots.py)
    slot_quantile: float = SLOT_QUANTILE  # "calibrated": the quantile of the rule's sizes on --calib
    batch: Batch = "dynamic"  # "dynamic" or a fixed batch size N
    opset: int = 17
    dynamo: bool = False
    simplify: bool = True
    fuse: bool = False  # com.microsoft contrib ops (export/fusion.py); off: some mobile ORT builds lack them


@dataclass(frozen=True)
class QuantizeOptions:
    """INT8: the file at ``out`` is then the INT8 one, its verified fp32 graph beside it."""

    mode: QuantizeMode | None = None  # None: fp32 only; "int8" = "int8-dynamic"
    approx_weights: ApproxWeights = APPROX_WEIGHTS_DEFAULT  # tflite int8: the ApproxNet's stored weights


@dataclass(frozen=True)
class VerifyOptions:
    """The data the file is verified on and how its latency is measured."""

    calib: Path | None = None  # image folder or GLUE TSV; None: synthetic inputs (warned)
    calib_samples: int = 16
    latency_runs: int = 20  # 0: skip the latency breakdown
    threads: int = 2  # onnxruntime threads for timing


@dataclass(frozen=True)
class ExportRequest:
    source: ModelSource
    out: Path
    # the reducer, built once where the input enters (the CLI's options via spec_from_options, a
    # trained dir's metadata, compress's choice); None: a trained dir's own
    reducer: ReducerSpec | None = None
    graph: GraphOptions = field(default_factory=GraphOptions)
    quantize: QuantizeOptions = field(default_factory=QuantizeOptions)
    verify: VerifyOptions = field(default_factory=VerifyOptions)


def check_request(req: ExportRequest) -> None:
    """Everything that can be wrong with a request without loading the model: fail before the load."""
    src, graph, verify = req.source, req.graph, req.verify
    suffix = {"onnx": ".onnx", "tflite": ".tflite"}.get(graph.target)
    if suffix is None:
        raise InputError(f"--target must be onnx or tflite, got {graph.target!r}")
    if req.out.suffix != suffix:
        raise InputError(
            f"--out {req.out}: a {graph.target} export is a {suffix} file (the runtime goes by the suffix)"
        )
    mode = req.quantize.mode
    if mode is not None and mode not in QUANTIZE:
        raise InputError(f"--quantize must be one of {sorted(QUANTIZE)}, got {mode!r}")
    if verify.calib_samples < 1:
        raise InputError(f"--calib-samples must be >= 1, got {verify.calib_samples}")
    if verify.calib is not None and not verify.calib.exists():
        raise InputError(f"--calib {verify.calib}: no such file or folder")
    if req.reducer is None and not is_trained_dir(src.model):  # a trained dir brings its own reducer
        raise InputError(f"--model {src.model} is no trained dir: the request needs a reducer spec")
    if src.approx_net is not None and src.approx is None:
        raise InputError("a loaded ApproxNet (approx_net) needs the dir it was loaded from (approx)")
    if graph.slots is not None and (graph.target != "tflite" or graph.slots not in SLOT_SIZINGS):
        raise InputError(
            f"--slots {graph.slots} applies to --target tflite, one of {', '.join(SLOT_SIZINGS)} "
            "(ONNX runs every layer on its data-dependent count)"
        )
    if not 0.0 < graph.slot_quantile <= 1.0:
        raise InputError(f"the slot quantile must be in (0, 1], got {graph.slot_quantile:g}")
    if graph.target == "tflite":
        if graph.fuse:
            raise InputError("--fuse is ONNX-only (it writes ONNX Runtime contrib ops)")
        if graph.batch not in ("dynamic", 1):
            raise InputError("TFLite exports have a static batch of 1 (the runtime runs a batch row by row)")
        if mode == "int8-static":
            raise InputError(
                "TFLite supports --quantize int8 (dynamic-range weights); int8-static is ONNX-only"
            )
