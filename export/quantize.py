"""INT8 post-training quantization of an exported graph with onnxruntime.quantization.

* ``dynamic``: int8 weights (per output channel) for MatMul/Gemm with a constant weight;
  activations are quantized on the fly per run. No calibration needed; the usual choice
  for transformers.
* ``static``: QDQ format, int8 weights (per channel) and uint8 activations whose ranges
  come from a calibration reader over the given batches (MinMax).

Embedding tables (a ``Gather`` from a 2-D float initializer: BERT's word, position and
token-type embeddings) are stored as 8-bit too; they are most of a text model's bytes, so
without them MiniLM-SST2 shrank only 1.55x (90.9 -> 58.7 MB) instead of 3.95x (-> 23.0 MB).
Per-channel weights matter more to accuracy than the tables do: on SST-2 dev, per-tensor
weights cost dense MiniLM 0.8-1.3 pt, per-channel ones nothing measurable (docs/int8.md).

Only matmuls with a constant weight are quantized (``MatMulConstBOnly``): the attention
products q·kᵀ and p·v stay float. The ApproxNet's matmuls (nodes named ``APPROX_SCOPE``)
stay fp32 by default: its maps decide which tokens survive, and a flipped token choice costs
more accuracy than the few percent of weights and latency it would save (measured in
``benchmarks/export_parity.py``; ``quantize_approx=True`` quantizes them too). Its embedding
tables are quantized like the main model's: they are over 80% of its bytes, and without them
MiniLM-SST2 STTABT is 2.8x smaller instead of 3.7x at the same accuracy, though its kept
counts then match fp32 on every sentence instead of 94% (docs/int8.md;
``approx_embeddings=False`` keeps them fp32, ``quantize_embeddings=False`` every table). The metadata JSON is carried over with a ``"quantization"`` entry added
(docs/onnx_contract.md), and a text model's tokenizer file follows the INT8 file.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sttabt_edge.atomic import publish, staging
from sttabt_edge.errors import ExportError
from sttabt_edge.export import ort as ort_utils
from sttabt_edge.export.metadata import check_saved_digest, read_metadata, set_metadata, tokenizer_name
from sttabt_edge.export.validate import (
    as_batches,
    fixed_batches,
    ort_run,
    static_batch,
    validate_model_outputs,
)
from sttabt_edge.method.approxnet import APPROX_SCOPE

MODES = ("dynamic", "static")
QUANTIZED_OPS = ("MatMul", "Gemm")
EMBEDDING_OPS = ("Gather",)  # only those reading an embedding table (see embedding_nodes)
# static activation ranges: min/max of the calibration batches, or a percentile of them (clips outliers)
CALIBRATIONS = {"minmax": "MinMax", "percentile": "Percentile"}
Feeds = Mapping[str, Any]  # input name -> array/tensor, one batch


@dataclass
class QuantReport:
    path: str
    mode: str
    fp32_bytes: int
    int8_bytes: int
    top1_agreement: float | None  # int8 vs fp32 argmax on the given inputs
    max_abs_logit_diff: float | None
    kept_counts_equal: bool | None
    fp32_nodes: int = 0  # matmul/gemm nodes deliberately left in fp32 (the ApproxNet's)
    int8_embeddings: int = 0  # embedding tables (Gather data) stored as 8-bit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BatchReader:
    """onnxruntime CalibrationDataReader over a list of feed dicts (duck-typed: get_next/rewind)."""

    def __init__(self, batches: Sequence[Mapping[str, np.ndarray]]):
        self.batches = [dict(b) for b in batches]
        self._it: Iterator[dict[str, np.ndarray]] = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.batches)


def quantize_onnx(
    in_path: str | Path,
    out_path: str | Path,
    mode: str = "dynamic",
    calibration_inputs: Feeds | Sequence[Feeds] | None = None,
    quantize_approx: bool = False,
    calibration: str = "minmax",
    quantize_embeddings: bool = True,
    approx_embeddings: bool = True,
) -> QuantReport:
    """Write an INT8 copy of ``in_path``; compare it with fp32 on ``calibration_inputs`` when given.

    ``calibration_inputs``: one batch or a list of batches (name -> array); required for
    ``static`` (activation ranges), optional for ``dynamic`` (only used for the report).
    """
    if mode not in MODES:
        raise ExportError(f"quantization mode must be one of {MODES}, got {mode!r}")
    if calibration not in CALIBRATIONS:
        raise ExportError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    src, dst = Path(in_path), Path(out_path)
    meta = read_metadata(src)  # also rejects corrupt files with a clear error
    session = ort_utils.open_session(src)
    names = tuple(i.name for i in session.get_inputs())
    size = static_batch(session) or 1  # calibrate (and compare) per sample unless the batch is fixed
    feeds = [ort_utils.to_feeds(names, b) for b in as_batches(calibration_inputs)]
    batches = [chunk for f in feeds for chunk, _ in fixed_batches(f, size)]
    if mode == "static" and not batches:
        raise ExportError("static quantization needs calibration_inputs (a few real batches)")
    with staging(dst) as work:  # dst and its tokenizer appear only once whole and sealed
        tmp = work / dst.name
        pre = _preprocess(src, work / "pre.onnx")
        plan = plan_nodes(onnx.load(str(pre)), quantize_approx, quantize_embeddings, approx_embeddings)
        try:
            _ort_quantize(mode, pre, tmp, plan, batches, calibration)
        except Exception as e:
            raise ExportError(f"{mode} INT8 quantization of {src} failed: {e}") from e
        proto = onnx.load(str(tmp))
        meta = _carry_tokenizer(src, tmp, {**meta, "quantization": f"int8-{mode}"})
        set_metadata(proto, meta, work)
        onnx.save(proto, str(tmp))
        check_saved_digest(tmp)
        publish(work, dst.parent, [*companions(meta), dst.name])
    report = _report(src, dst, mode, session, feeds, size)
    report.fp32_nodes, report.int8_embeddings = plan.fp32_matmuls, plan.embeddings
    return report


@dataclass(frozen=True)
class NodePlan:
    """What ORT is asked to quantize: op types, and the nodes of those types left in float."""

    op_types: tuple[str, ...]
    exclude: tuple[str, ...]
    fp32_matmuls: int  # constant-weight matmuls excluded (the ApproxNet's)
    embeddings: int  # embedding Gathers quantized


def plan_nodes(
    proto: onnx.ModelProto, quantize_approx: bool, quantize_embeddings: bool, approx_embeddings: bool = True
) -> NodePlan:
    """Exclude the ApproxNet's matmuls (unless ``quantize_approx``) and every Gather that is not an
    embedding lookup: a Gather of hidden states (token compaction) or of a 1-D constant (thresholds)
    must stay exact, and static QDQ would otherwise quantize its activations."""
    weights = {t.name for t in proto.graph.initializer}
    tables = embedding_nodes(proto) if quantize_embeddings else set()
    if not approx_embeddings:
        tables = {name for name in tables if not name.startswith(APPROX_SCOPE)}
    exclude, fp32_matmuls = [], 0
    for n in proto.graph.node:
        if n.op_type in EMBEDDING_OPS:
            if n.name not in tables:
                exclude.append(n.name)
        elif n.op_type in QUANTIZED_OPS and not quantize_approx and n.name.startswith(APPROX_SCOPE):
            exclude.append(n.name)
            if n.op_type == "Gemm":  # dynamic mode first rewrites a Gemm as "<name>_MatMul" (+ "_Add")
                exclude.append(f"{n.name}_MatMul")
            fp32_matmuls += n.input[1] in weights
    ops = QUANTIZED_OPS + (EMBEDDING_OPS if tables else ())
    return NodePlan(ops, tuple(exclude), fp32_matmuls, len(tables))


def embedding_nodes(proto: onnx.ModelProto) -> set[str]:
    """Names of the Gathers that look rows up in a 2-D float initializer along axis 0 (embedding tables)."""
    tables = {
        t.name for t in proto.graph.initializer if len(t.dims) == 2 and t.data_type == onnx.TensorProto.FLOAT
    }
    found = set()
    for n in proto.graph.node:
        axis = next((onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 0)
        if n.op_type == "Gather" and n.input[0] in tables and axis == 0:
            found.add(n.name)
    return found


def _ort_quantize(
    mode: str, pre: Path, tmp: Path, plan: NodePlan, batches: list[dict[str, np.ndarray]], calibration: str
) -> None:
    """One call into onnxruntime.quantization; per-channel weights in both modes."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    common: dict[str, Any] = {
        "op_types_to_quantize": list(plan.op_types),
        "per_channel": True,
        "weight_type": QuantType.QInt8,
        "nodes_to_exclude": list(plan.exclude),
        "extra_options": {"MatMulConstBOnly": True},
    }
    if mode == "dynamic":
        quantize_dynamic(pre, tmp, **common)
        return
    quantize_static(
        pre,
        tmp,
        BatchReader(batches),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        calibrate_method=getattr(CalibrationMethod, CALIBRATIONS[calibration]),
        **common,
    )


def _carry_tokenizer(src: Path, dst: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """A text model's tokenizer file is copied to ``<dst stem>.tokenizer.json`` and the metadata
    names it, so the INT8 file works on its own (in any folder, under any name). ``dst``: where the
    file is built (a staging folder, see :func:`sttabt_edge.atomic.staging`)."""
    text = (meta.get("preprocess") or {}).get("text")
    if not text:
        return meta
    tok_src, tok_dst = src.parent / text["tokenizer_file"], dst.with_name(tokenizer_name(dst.stem))
    if tok_src.resolve() != tok_dst.resolve():
        if not tok_src.is_file():
            raise ExportError(
                f"{src}: its tokenizer {tok_src} is missing; cannot write a self-contained {dst.name}"
            )
        shutil.copyfile(tok_src, tok_dst)
    preprocess = {**meta["preprocess"], "text": {**text, "tokenizer_file": tok_dst.name}}
    return {**meta, "preprocess": preprocess}


def companions(meta: Mapping[str, Any]) -> list[str]:
    """The files beside a model its metadata names (a text model's tokenizer), to publish with it."""
    text = (meta.get("preprocess") or {}).get("text")
    return [text["tokenizer_file"]] if text else []


def approx_nodes(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The ApproxNet's nodes (the ``APPROX_SCOPE`` name prefix the exporter gives them)."""
    return [n for n in proto.graph.node if n.name.startswith(APPROX_SCOPE)]


def _preprocess(src: Path, dst: Path) -> Path:
    """ORT's recommended pre-pass (ONNX shape inference + graph optimisation), best effort.

    Symbolic shape inference is skipped: it gives up on data-dependent token counts and
    then leaves temp files in the working directory.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return dst
    except Exception:  # an optional optimisation: quantization works without it
        return src


def _report(
    src: Path, dst: Path, mode: str, fp32: Any, feeds: list[dict[str, np.ndarray]], rows: int
) -> QuantReport:
    """INT8 against fp32 on the calibration feeds (in batches of ``rows``): reported, not held to a bound."""
    report = QuantReport(str(dst), mode, src.stat().st_size, dst.stat().st_size, None, None, None)
    if not feeds:
        return report
    parity = validate_model_outputs(
        ort_run(ort_utils.open_session(dst)),
        ort_run(fp32),
        feeds,
        rows=rows,
        atol=None,
        require_kept=False,
        what="INT8",
        against=str(src),
        path=dst,
    )
    report.top1_agreement = parity.top1_agreement
    report.max_abs_logit_diff = parity.max_abs_diff
    report.kept_counts_equal = parity.kept_counts_equal
    return report
