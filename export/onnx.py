"""ONNX export of a model under a reducer: one graph, checked dims, slimmed, metadata, verified.

Exporter choice, by measurement (2 shared cores, load 4-5, so read ratios, not absolutes):
the legacy TorchScript exporter (``dynamo=False``, opset 17) is the default.

* ORT latency, DeiT-Tiny, batch 1, 2 threads, median of 7 process-separated medians of 30
  runs, interleaved: STTABT (untrained ApproxNet /4, keep 0.3) legacy 44.2 ms vs dynamo
  45.4 ms; dense legacy 64.2 ms vs dynamo 72.2 ms. onnxslim did not change latency.
* Export time: tiny test model 0.75 s vs 22 s; DeiT-Tiny STTABT 8 s vs 49 s (unslimmed).
* Both give the same parity (< 1e-5 on tiny models) and both keep the text length dynamic;
  legacy needs no ``Dim`` juggling for data-dependent (threshold) counts.

``dynamo=True`` stays available (opset >= 18, ``Dim.DYNAMIC`` axes), verified the same way.

Every export is traced with a batch-2 example (a batch-1 trace can silently pin the batch
axis), its input/output dims are asserted symbolic where they must be, and the written
file is verified against PyTorch on the given calibration batch (and, for a dynamic batch,
on its first sample alone, trimmed to its real length for text) before it is moved into
place: a file at ``out_path`` always passed verification.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import onnx
import torch
from torch import nn

from sttabt_edge.atomic import publish, staging
from sttabt_edge.errors import ExportError
from sttabt_edge.export import ort as ort_utils
from sttabt_edge.export.graph import OUTPUT_NAMES, ExportModule, example_args, family_io
from sttabt_edge.export.metadata import build_metadata, check_saved_digest, copy_tokenizer, set_metadata
from sttabt_edge.export.validate import (
    Outputs,
    ParityReport,
    Run,
    ort_run,
    static_batch,
    validate_model_outputs,
)
from sttabt_edge.sparse_model import SparseClassifier

log = logging.getLogger(__name__)

Batch = Literal["dynamic"] | int  # "dynamic" or a fixed batch size


class OnnxOptions(TypedDict):
    """The exporter settings of a request, shared by the pipeline graph and the dense baseline."""

    batch: Batch
    opset: int
    dynamo: bool
    simplify: bool


# ---- inputs and axes ---------------------------------------------------------------------------


def _take(t: torch.Tensor, n: int) -> torch.Tensor:
    """First n samples, cycling when the batch is smaller. (B, ...) -> (n, ...)."""
    return t[torch.arange(n) % t.shape[0]]


def trace_args(family: str, inputs: Mapping[str, torch.Tensor], batch: Batch) -> tuple[torch.Tensor, ...]:
    """The tracing example: batch 2 for a dynamic batch (never 1), else exactly ``batch``."""
    n = 2 if batch == "dynamic" else int(batch)
    return tuple(_take(a, n) for a in example_args(family, inputs))


def dynamic_axes(names: tuple[str, ...], family: str, batch: Batch, outputs: tuple[str, ...]) -> dict:
    """Legacy-exporter axes, from the family's I/O description: batch (dim 0) unless fixed; the
    others (text length, dim 1) always dynamic."""
    io = family_io(family)
    axes: dict[str, dict[int, str]] = {}
    for t in io.inputs + io.outputs:
        if t.name in names or t.name in outputs:
            d = {dim: ax for dim, ax in t.axes if dim != 0 or batch == "dynamic"}
            if d:
                axes[t.name] = d
    return axes


def _dynamo_shapes(module: nn.Module, names: tuple[str, ...], axes: dict) -> tuple:
    from torch.export import Dim

    specs = tuple({ax: Dim.DYNAMIC for ax in axes.get(n, {})} or None for n in names)
    params = inspect.signature(module.forward).parameters.values()
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    return (specs,) if varargs else specs


def effective_opset(opset: int, dynamo: bool) -> int:
    """The dynamo exporter emits opset >= 18 (it would convert down with a warning otherwise)."""
    return max(opset, 18) if dynamo else opset


def trace_to_onnx(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    names: tuple[str, ...],
    outputs: tuple[str, ...],
    axes: dict,
    opset: int = 17,
    dynamo: bool = False,
) -> None:
    """torch.onnx.export with either exporter; tracer warnings about shape checks are expected."""
    opset = effective_opset(opset, dynamo)
    kwargs: dict[str, Any] = {
        "input_names": list(names),
        "output_names": list(outputs),
        "opset_version": opset,
    }
    if dynamo:
        kwargs.update(dynamo=True, dynamic_shapes=_dynamo_shapes(module, names, axes), verbose=False)
    else:
        kwargs.update(dynamo=False, dynamic_axes=axes, do_constant_folding=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on input validation; parity checks catch real ones
        try:
            torch.onnx.export(module.eval(), args, str(path), **kwargs)
        except Exception as e:
            raise ExportError(f"torch.onnx.export (dynamo={dynamo}, opset {opset}) failed: {e}") from e


# ---- graph checks ------------------------------------------------------------------------------


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in vi.type.tensor_type.shape.dim]


def check_io_dims(proto: onnx.ModelProto, family: str, batch: Batch) -> dict[str, list[int | str]]:
    """Assert the batch axis (and the text length axis) are symbolic; a silent specialisation fails here."""
    contract_inputs = {t.name: t for t in family_io(family).inputs}
    inputs = {vi.name for vi in proto.graph.input}
    ios = {vi.name: _dims(vi) for vi in [*proto.graph.input, *proto.graph.output]}
    bad = []
    for name, dims in ios.items():
        if batch == "dynamic":
            ok = isinstance(dims[0], str)
        else:  # fixed inputs; outputs may stay symbolic (the exporter does not always propagate N)
            ok = dims[0] == int(batch) or (name not in inputs and isinstance(dims[0], str))
        if not ok:
            bad.append(
                f"{name} batch dim is {dims[0]!r}, expected {'symbolic' if batch == 'dynamic' else batch}"
            )
        spec = contract_inputs.get(name)  # its other dynamic axes (text: the length) stay symbolic
        bad += [
            f"{name} {ax} dim is {dims[dim]!r}, expected symbolic"
            for dim, ax in (spec.axes if spec else ())
            if dim > 0 and not isinstance(dims[dim], str)
        ]
    if bad:
        raise ExportError("exported graph was specialised: " + "; ".join(bad))
    return ios


def slim(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim (constant folding, dead-node and shape-op cleanup); parity is verified afterwards."""
    import onnxslim

    return onnxslim.slim(proto)


# ---- export ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    """A verified export: the file, the calibration batch's report, and every verified set's report."""

    path: Path
    parity: ParityReport  # on the calibration batch (= checks[0])
    checks: tuple[ParityReport, ...]  # calibration batch, then (dynamic batch) its first sample alone


def export_onnx(
    sc: SparseClassifier,
    out_path: str | Path,
    *,
    example_inputs: Mapping[str, torch.Tensor],
    batch: Batch = "dynamic",
    opset: int = 17,
    dynamo: bool = False,
    simplify: bool = True,
    metadata: Mapping[str, Any] | None = None,
    tokenizer_file: str | Path | None = None,
    atol: float = 1e-4,
) -> ExportResult:
    """Export ``sc`` (its model under its reducer, real removal) as one ONNX graph; verify it on
    ``example_inputs``.

    ``example_inputs``: a small real calibration batch (also the verification set).
    ``metadata``: entries overriding the generated contract JSON (e.g. ``source_model``).
    ``tokenizer_file``: text only; defaults to ``<model dir>/tokenizer.json``.
    Returns the written path, the calibration batch's parity report and every set's report.
    """
    if batch != "dynamic" and (not isinstance(batch, int) or batch < 1):
        raise ExportError(f"batch must be 'dynamic' or a positive int, got {batch!r}")
    opset = effective_opset(opset, dynamo)
    module = ExportModule(sc).eval()
    family, names = module.parts.family, module.input_names
    out = Path(out_path)
    # built under its final name in a temp folder beside out, published only once verified: an
    # error or an interrupt leaves no file at out (an older one stays whole)
    with staging(out) as work:
        raw, tmp = work / "raw.onnx", work / out.name  # dynamo may add raw.onnx.data
        axes = dynamic_axes(names, family, batch, OUTPUT_NAMES)
        trace_to_onnx(
            module, trace_args(family, example_inputs, batch), raw, names, OUTPUT_NAMES, axes, opset, dynamo
        )
        meta = build_metadata(
            sc.model, sc.reducer, out_stem=out.stem, opset=opset, dynamo=dynamo, overrides=metadata
        )
        # the seal covers the tokenizer: it is copied beside tmp first, and moved with it
        tok = copy_tokenizer(tokenizer_file, sc.model, tmp) if family_io(family).text else None
        _save(_finish(onnx.load(str(raw)), family, batch, simplify, meta, tmp.parent), tmp)
        try:
            reports = verify_all(tmp, sc, example_inputs, batch, atol)
        except ExportError as err:
            if not simplify:
                raise
            log.warning("slimmed graph failed verification (%s); retrying without onnxslim", err)
            _save(_finish(onnx.load(str(raw)), family, batch, False, meta, tmp.parent), tmp)
            reports = verify_all(tmp, sc, example_inputs, batch, atol)
        publish(work, out.parent, [*([tok.name] if tok is not None else []), out.name])
    return ExportResult(out, reports[0], tuple(reports))


def _finish(
    proto: onnx.ModelProto, family: str, batch: Batch, simplify: bool, meta: dict, folder: Path
) -> onnx.ModelProto:
    """Check, slim, and seal (the tokenizer sits in ``folder``, beside where the file is saved)."""
    check_io_dims(proto, family, batch)
    if simplify:
        try:
            proto = slim(proto)
        except Exception as e:  # a slimmer bug must not block the export: keep the plain graph
            log.warning("onnxslim failed (%s); keeping the unsimplified graph", e)
        check_io_dims(proto, family, batch)
    set_metadata(proto, meta, folder)
    return proto


def _save(proto: onnx.ModelProto, path: Path) -> None:
    """Save; the file must pass the runtime's seal check (the runtime refuses it otherwise)."""
    onnx.save(proto, str(path))
    check_saved_digest(path)


def verify_all(
    path: Path,
    sc: SparseClassifier,
    inputs: Mapping[str, torch.Tensor],
    batch: Batch,
    atol: float,
) -> list[ParityReport]:
    """The calibration batch, and for a dynamic batch its first sample alone (own length for text)."""
    session, module = ort_utils.open_session(path), ExportModule(sc).eval()
    sets = [inputs, first_sample(inputs)] if batch == "dynamic" else [inputs]
    return [compare(session, module, s, atol, path) for s in sets]


def first_sample(inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sample 0, with text padding columns removed (so a second sequence length is exercised)."""
    one = {k: v[:1] for k, v in inputs.items()}
    mask = one.get("attention_mask")
    if mask is None:
        return one
    n = int(mask[0].sum())
    return {k: v[:, :n] for k, v in one.items()}


# ---- verification (export/validate.py) ---------------------------------------------------------


def torch_run(module: ExportModule) -> Run:
    """The eager library (the graph's module) as the reference :data:`Run` of the validation."""

    def run(inputs: Mapping[str, torch.Tensor]) -> Outputs:
        with torch.no_grad():
            logits, kept = module(*example_args(module.parts.family, inputs))
        return logits.numpy(), kept.numpy()

    return run


def verify_onnx(
    path: str | Path,
    sc: SparseClassifier,
    inputs: Mapping[str, torch.Tensor],
    atol: float = 1e-4,
) -> ParityReport:
    """onnxruntime vs PyTorch on ``inputs``: max abs logit diff <= atol and identical kept counts.

    Raises ExportError otherwise (and for files ORT cannot load). Returns the measured report.
    """
    return compare(ort_utils.open_session(path), ExportModule(sc).eval(), inputs, atol, path)


def compare(
    session: Any, module: ExportModule, inputs: Mapping[str, torch.Tensor], atol: float, path: str | Path
) -> ParityReport:
    """The session against the eager module on ``inputs``, in the graph's batch size when it is fixed."""
    return validate_model_outputs(
        ort_run(session),
        torch_run(module),
        inputs,
        rows=static_batch(session),
        atol=atol,
        what="ONNX",
        against="PyTorch",
        path=path,
    )
