"""TFLite (LiteRT) export with litert-torch: a static, batch-1, still really sparse model.

What the file holds: embedding → (STTABT) ApproxNet → back-tracking → sparse layer loop
with real removal → head, as :class:`~sttabt_edge.export.graph.ExportModule` traces it,
converted by ``litert_torch.convert`` and verified in the LiteRT interpreter. Files:
``<name>.tflite``, its metadata sidecar ``<name>.tflite.json`` (docs/onnx_contract.md plus
a ``tflite`` block: static shapes, kept sizes, verification reports) and, for text,
``<name>.tokenizer.json``.

Static shapes (TFLite has no usable dynamic token dimension):

* batch 1 — ``sttabt_edge.runtime`` runs a batch sample by sample;
* images: the model's (3, H, W); text: a caller-chosen sequence length N (e.g. 128)
  that the runtime pads to (right padding, id 0, mask 0) and truncates at
  (``preprocess.text.max_length`` in the sidecar is N);
* per-layer slots (:mod:`~sttabt_edge.export.tflite_slots`): by default sized from the rule's
  sizes on the calibration inputs (a quantile), the rule's set cut by importance when it
  overflows; ``slots="bound"``: the rule's static bound (union: min(N, k̂_l + size_{l+1})).
  The tensors really shrink; what is *data-dependent* is only which tokens fill the slots
  and how many are real (per-sample k from the real length, a value, not a shape), the
  other slots are masked. So a padded short text gives the same logits and kept counts as
  PyTorch on the unpadded text, but costs what the slots cost at length N.

What converts (litert-torch 0.10, ai-edge-litert 2.3; checked by the tests): dense ViT/BERT;
STTABT top-k with an ApproxNet, on images and on right-padded text. Runtime ops of the
sparse files: FULLY_CONNECTED, BATCH_MATMUL, SOFTMAX, GELU, CONV_2D (patches),
EMBEDDING_LOOKUP and TANH (BERT), the LayerNorm arithmetic (MEAN, SQUARED_DIFFERENCE,
RSQRT, ...), and for the token selection TOPK_V2 (float keys), GATHER_ND, CUMSUM,
STABLEHLO_SCATTER (the rank mask), SELECT_V2, LESS, LOGICAL_AND/OR, MINIMUM/MAXIMUM, CAST.
STABLEHLO_SCATTER needs a runtime with StableHLO kernels (ai-edge-litert 2.3 has it; an old
tflite-runtime may not). ``torch.arange`` in the library is fine here: with static sizes it
is folded into a constant, so no STABLEHLO_IOTA reaches the runtime. Integer inputs become
int32 (``enable_x64=False``), and so does ``kept_counts``.

What does not, and how it is handled:

* the in-graph float64 ``ceil(ratio · n_real)`` of ``topk_backtrack`` (``tfl.ceil`` on
  f64 is illegal): :class:`StaticTopkReducer` replaces it by an exact constant table
  ``ceil(r_l · m)`` for m = 0..N (Python ``math.ceil``, the same double arithmetic), the
  rest of the back-tracking loop is the library's building blocks. Eager numerics are
  identical (tested);
* learned thresholds (concrete): no static size of their own. The file runs the thresholds
  as trained, inside calibrated slots (or N slots with ``slots="bound"``), as above;
* ``topk`` / ``tome`` / ``ltp`` reducers (float64 ceil or data-dependent counts inside
  the online loop): refused with an ExportError; use ONNX.

INT8: ``quantize="int8"`` is ai-edge-quantizer dynamic-range quantization (int8 per-channel weights,
float activations quantized on the fly) of FULLY_CONNECTED, CONV_2D and EMBEDDING_LOOKUP only. Not
BATCH_MATMUL: in the back-tracking one operand can be a folded constant (the fixed prefix rows of a ViT),
which the kernel cannot take as int8 (it fails at allocation), and that float precision decides which
tokens survive. The ApproxNet stays float32 as in ONNX INT8 (``approx_weights="float16"`` stores it
half size, checked the same way), so the file keeps PyTorch's tokens (kept counts are checked); its
logits are reported, not held to ``atol``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sttabt_edge.atomic import publish, staging
from sttabt_edge.errors import ExportError
from sttabt_edge.export.graph import ExportModule, example_args, family_io
from sttabt_edge.export.metadata import build_metadata, copy_tokenizer, tokenizer_name, write_sidecar
from sttabt_edge.export.tflite_graph import (
    APPROX_WEIGHTS_DEFAULT,
    ApproxWeights,
    Sample,
    StaticTopkReducer,
    TfliteModule,
    approx_weights_record,
    check_quantize,
    check_supported,
    convert,
    litert_torch_module,
    quantize_bytes,
    quiet_litert,
    static_reducer,
)
from sttabt_edge.export.tflite_slots import (
    SLOT_QUANTILE,
    SLOT_SIZINGS,
    SlotSizing,
    plan_slots,
    sidecar_reference,
    slot_reducer,
)
from sttabt_edge.export.tflite_xnnpack import xnnpack_coverage
from sttabt_edge.export.threshold_ties import Ties, reference_ties, split_ties
from sttabt_edge.export.validate import SIDECAR_FIELDS, Outputs, compare_outputs, fixed_batches, judge
from sttabt_edge.models.adapter import embed
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.sttabt import SttabtReducer
from sttabt_edge.sparse_model import SparseClassifier

__all__ = [
    "StaticTopkReducer",
    "TfliteModule",
    "export_tflite",
    "quantize_tflite",
    "read_sidecar",
    "verify_tflite",
]


# ---- static inputs --------------------------------------------------------------------------


def token_count(sc: SparseClassifier, sample: Sample) -> int:
    """N of the static graph: the text length, or the ViT's patches + prefix tokens."""
    with torch.no_grad():
        return int(embed(sc.parts, sample)[0].shape[1])


def samples(family: str, inputs: Mapping[str, torch.Tensor], seq_len: int | None) -> list[Sample]:
    """Split a batch into batch-1 contract inputs; text right-padded (id/mask/type 0) to seq_len."""
    args = example_args(family, inputs)
    io = family_io(family)
    out = []
    for one, _ in fixed_batches(dict(zip(io.input_names, args, strict=True)), 1):
        out.append(_pad_text(one, seq_len or args[0].shape[1]) if io.variable_length else one)
    return out


def _pad_text(sample: Sample, seq_len: int) -> Sample:
    n_real = int(sample["attention_mask"].sum())
    if n_real > seq_len:
        raise ExportError(
            f"a calibration text has {n_real} real tokens, more than the static length {seq_len}"
        )
    out = {}
    for name, t in sample.items():  # (1, n) -> (1, seq_len)
        t = t[:, :n_real]
        out[name] = torch.cat([t, t.new_zeros(1, seq_len - n_real)], dim=1)
    return out


def unpadded(sample: Sample) -> Sample:
    """A text sample cut to its real length (the PyTorch reference sees no padding)."""
    if "attention_mask" not in sample:
        return sample
    n = int(sample["attention_mask"].sum())
    return {k: v[:, :n] for k, v in sample.items()}


# ---- verification ---------------------------------------------------------------------------


def run_tflite(path: str | Path, batch: Sequence[Sample], threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """LiteRT on batch-1 samples -> (logits (S, K), kept_counts (S, L))."""
    from ai_edge_litert.interpreter import Interpreter

    with quiet_litert():  # the interpreter's XNNPACK INFO line (on its first run)
        try:
            runner = Interpreter(model_path=str(path), num_threads=threads).get_signature_runner()
        except (ValueError, RuntimeError) as e:
            raise ExportError(f"{path}: LiteRT cannot load it: {e}") from e
        dtypes = {k: v["dtype"] for k, v in runner.get_input_details().items()}
        logits: list[np.ndarray] = []
        kept: list[np.ndarray] = []
        for s in batch:
            out = runner(**{k: v.numpy().astype(dtypes[k]) for k, v in s.items()})
            logits.append(out["logits"])
            kept.append(out["kept_counts"])
    return np.concatenate(logits), np.concatenate(kept)


@torch.no_grad()
def run_torch(sc: SparseClassifier, batch: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """The eager library on each sample at its own length (no padding) -> (logits, kept_counts)."""
    module = ExportModule(sc).eval()
    outs = [module(*unpadded(s).values()) for s in batch]
    return torch.cat([o[0] for o in outs]).numpy(), torch.cat([o[1] for o in outs]).numpy()


def compare(got: Outputs, ref: Outputs) -> dict[str, Any]:
    """The one comparer (export/validate.py), in the sidecar's JSON form."""
    return compare_outputs(got, ref).to_dict(SIDECAR_FIELDS)


def _check(
    got: Outputs, ref: Outputs, path: Path, atol: float | None, ties: Ties | None = None
) -> dict[str, Any]:
    """LiteRT against PyTorch: logits within ``atol`` (None: reported only) and the same kept counts,
    but for samples forgiven as threshold ties (export/threshold_ties.py), listed in the report."""
    got, ref, tied = split_ties(got, ref, atol, ties) if ties is not None else (got, ref, [])
    report = judge(got, ref, atol=atol, what="TFLite", against="PyTorch", path=path)
    return report.to_dict(SIDECAR_FIELDS) | ({"threshold_ties": tied} if tied else {})


def _static_len(path: Path, family: str) -> int | None:
    from ai_edge_litert.interpreter import Interpreter

    if not family_io(family).variable_length:
        return None
    with quiet_litert():
        details = Interpreter(model_path=str(path)).get_signature_runner().get_input_details()
    return int(details["input_ids"]["shape"][1])


def verify_tflite(
    path: str | Path,
    sc: SparseClassifier,
    inputs: Mapping[str, torch.Tensor],
    atol: float | None = 1e-4,
) -> dict[str, Any]:
    """LiteRT vs eager PyTorch, sample by sample: max |Δlogit| <= atol and identical kept counts.

    Text is padded to the file's static length for LiteRT and left unpadded for PyTorch.
    The reference is ``sc``'s reducer cut to the slots the sidecar records (``tflite.slots``).
    ``atol=None`` only reports the logit gap (quantized files). Raises ExportError.
    """
    p = Path(path)
    family = sc.parts.family
    ref_reducer = sidecar_reference(read_sidecar(p), sc.reducer)
    batch = samples(family, inputs, _static_len(p, family))
    ref = sc.with_reducer(ref_reducer)
    ties = reference_ties(ref.reducer, lambda: run_torch(ref, batch)[1])
    return _check(run_tflite(p, batch), run_torch(ref, batch), p, atol, ties)


# ---- files ----------------------------------------------------------------------------------


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_sidecar(path: str | Path) -> dict[str, Any]:
    side = sidecar_path(Path(path))
    if not side.is_file():
        raise ExportError(f"{path}: metadata sidecar {side.name} is missing")
    return json.loads(side.read_text(encoding="utf-8"))


def tflite_metadata(
    model: nn.Module,
    reducer: Reducer,
    out: Path,
    *,
    seq_len: int | None,
    slots: dict[str, Any] | None,
    quantize: str | None,
    overrides: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The contract JSON, TFLite flavour: static shapes and the slots (sizes, how they were chosen)."""
    import transformers

    litert_torch = litert_torch_module()
    own: dict[str, Any] = {
        "exporter": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "litert_torch": litert_torch.__version__,
            "target": "tflite",
            "quantize": quantize,
        },
        "tflite": {
            "batch": 1,
            "sequence_length": seq_len,
            "kept_sizes": None if slots is None else slots["sizes"],
            "slots": slots,
            "quantize": quantize,
        },
    }
    if seq_len is not None:
        own["preprocess"] = {"text": {"tokenizer_file": tokenizer_name(out.stem), "max_length": seq_len}}
    meta = build_metadata(model, reducer, out_stem=out.stem, opset=0, dynamo=False, overrides=own)
    meta.update(overrides or {})
    return meta


def export_tflite(
    sc: SparseClassifier,
    out_path: str | Path,
    *,
    example_inputs: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
    quantize: str | None = None,
    approx_weights: ApproxWeights = APPROX_WEIGHTS_DEFAULT,
    seq_len: int | None = None,
    tokenizer_file: str | Path | None = None,
    atol: float = 1e-4,
    slots: SlotSizing = "calibrated",
    slot_quantile: float = SLOT_QUANTILE,
) -> Path:
    """Convert ``sc`` (its model under its reducer) to a static batch-1 .tflite, verify it, write ``<file>.json``.

    ``example_inputs``: a small real batch: the conversion sample (its first row), the
    slot calibration set and the verification set. ``slots``: STTABT's static per-layer sizes,
    "calibrated" (the ``slot_quantile`` of the rule's sizes on ``example_inputs``, the rule's set
    cut by importance when it overflows) or "bound" (the rule's static bound, exact); see
    :mod:`sttabt_edge.export.tflite_slots`. ``seq_len``: text only, the static
    length (default: the batch's width). ``quantize="int8"``: the float file is verified at
    ``atol`` first, the int8 one only for kept counts; both reports go to the sidecar.
    Nothing is written to ``out_path`` (nor its sidecar or tokenizer) unless verification passed:
    all three are built in a staging folder and moved beside it last (the model file last), so an
    error or an interrupt leaves an older file there whole. ``metadata`` entries override the
    generated JSON.
    """
    check_quantize(quantize, approx_weights)
    model, reducer = sc.model, sc.reducer
    model.eval()  # as ExportModule(...).eval() does for ONNX: no dropout, no concrete-mask noise
    reducer.eval()
    family = sc.parts.family
    out = Path(out_path)
    if slots not in SLOT_SIZINGS:
        raise ExportError(f"slots must be one of {SLOT_SIZINGS}, got {slots!r}")
    check_supported(reducer)
    batch = samples(family, example_inputs, seq_len)
    n_tokens = token_count(sc, batch[0])
    record = None
    if isinstance(reducer, SttabtReducer):
        record = plan_slots(model, reducer, example_inputs, n_tokens, slots, slot_quantile)
    graph_reducer = static_reducer(model, reducer, n_tokens, record)
    ref = slot_reducer(reducer, record, static=False) if isinstance(reducer, SttabtReducer) else reducer
    with staging(out) as work:  # out, its sidecar and tokenizer appear only once verified and sealed
        tmp, names = work / out.name, [sidecar_path(out).name, out.name]
        if family_io(family).text:  # before the (minutes-long) conversion: a missing tokenizer fails fast
            names.insert(0, copy_tokenizer(tokenizer_file, model, tmp).name)
        tmp.write_bytes(convert(TfliteModule(sc.with_reducer(graph_reducer)), batch[0]))
        torch_out = run_torch(sc.with_reducer(ref), batch)
        if record is not None and ref is not reducer:  # what the cut costs on these inputs, in PyTorch
            record["agreement_with_rule"] = compare(torch_out, run_torch(sc, batch))
        ties = reference_ties(ref, lambda: run_torch(sc.with_reducer(ref), batch)[1])
        reports = {"float": _check(run_tflite(tmp, batch), torch_out, out, atol, ties)}
        if quantize is not None:
            tmp.write_bytes(quantize_bytes(tmp.read_bytes(), quantize, approx_weights))
            reports[quantize] = _check(run_tflite(tmp, batch), torch_out, out, None, ties)
        meta = tflite_metadata(
            model,
            reducer,
            out,
            seq_len=n_tokens if family_io(family).variable_length else None,
            slots=record,
            quantize=quantize,
            overrides=metadata,
        )
        meta["tflite"]["approx_weights"] = approx_weights_record(reducer, quantize, approx_weights)
        meta["tflite"].update(
            verification=reports, size_bytes=tmp.stat().st_size, xnnpack=xnnpack_coverage(tmp)
        )
        write_sidecar(sidecar_path(tmp), meta, tmp.read_bytes())  # sealed: the runtime checks it on load
        publish(work, out.parent, names)
    return out


def quantize_tflite(
    float_path: str | Path,
    out_path: str | Path,
    *,
    sc: SparseClassifier,
    inputs: Mapping[str, torch.Tensor],
    mode: str = "int8",
    approx_weights: ApproxWeights = APPROX_WEIGHTS_DEFAULT,
) -> dict[str, Any]:
    """Quantize an exported float .tflite without reconverting; sidecar (+ tokenizer) follow it.

    Returns the agreement report (logit gap reported, kept counts must match); on failure
    nothing is written at ``out_path`` nor beside it (see :func:`export_tflite`).
    """
    src, out = Path(float_path), Path(out_path)
    meta = read_sidecar(src)
    meta["exporter"]["quantize"] = meta["tflite"]["quantize"] = mode
    meta["tflite"]["approx_weights"] = approx_weights_record(sc.reducer, mode, approx_weights)
    text = (meta.get("preprocess") or {}).get("text")
    with staging(out) as work:  # nothing at out (nor beside it) unless verified
        tmp, names = work / out.name, [sidecar_path(out).name, out.name]
        if text:
            tok = tmp.with_name(tokenizer_name(out.stem))
            shutil.copyfile(src.parent / text["tokenizer_file"], tok)
            text["tokenizer_file"] = tok.name
            names.insert(0, tok.name)
        tmp.write_bytes(quantize_bytes(src.read_bytes(), mode, approx_weights))
        meta["tflite"].update(size_bytes=tmp.stat().st_size, xnnpack=xnnpack_coverage(tmp))
        write_sidecar(sidecar_path(tmp), meta, tmp.read_bytes())  # verify_tflite reads it
        report = verify_tflite(tmp, sc, inputs, atol=None)
        meta["tflite"]["verification"] = {**(meta["tflite"].get("verification") or {}), mode: report}
        write_sidecar(sidecar_path(tmp), meta, tmp.read_bytes())
        publish(work, out.parent, names)
    return report
