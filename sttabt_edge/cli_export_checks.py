"""`sttabt-edge export`'s up-front checks: values and every file it will write, before the model loads.

An export runs for seconds to minutes; an opset the exporter cannot emit, an ``--out`` in a
missing folder or onto the model itself used to fail only after it (``--opset 0`` printed the
whole graph first). Torch-free.
"""

from __future__ import annotations

from pathlib import Path

from sttabt_edge.cli_common import MAX_BATCH, MAX_SEQ_LEN, MAX_THREADS, check_at_least, fail
from sttabt_edge.cli_inputs import check_data_kind, model_family, model_positions
from sttabt_edge.cli_outputs import Inputs, check_distinct, check_not_input, check_output_file
from sttabt_edge.runtime.contract import family_io

# Opsets every export kind was checked at (legacy and dynamo exporters, INT8, --fuse): 14 is the first
# with scaled_dot_product_attention, 23 the newest torch 2.13's exporter and onnxruntime 1.32 share.
MIN_OPSET, MAX_OPSET = 14, 23


def export_outputs(out: Path, target: str, quantized: bool) -> list[tuple[str, Path]]:
    """Every file an export to ``out`` may write: the file, its fp32 sibling (INT8), the tokenizer
    beside each (text models) and, for TFLite, each one's metadata sidecar."""
    files = [out, out.with_name(f"{out.stem}.fp32{out.suffix}")] if quantized else [out]
    named = [("--out", out)] + [("--out's fp32 file", f) for f in files[1:]]
    for f in files:
        named.append((f"{f.name}'s tokenizer", f.with_name(f"{f.stem}.tokenizer.json")))
        if target == "tflite":
            named.append((f"{f.name}'s sidecar", f.with_name(f.name + ".json")))
    return named


def check_export(
    model: str,
    out: Path,
    json_out: Path | None,
    target: str,
    quantized: bool,
    inputs: Inputs,
    calib: Path | None,
    opset: int,
    seq_len: int,
    calib_samples: int,
    threads: int,
) -> None:
    """Values in range, ``--calib`` of the model's kind, and outputs that can be written and are
    none of the inputs (:mod:`~sttabt_edge.cli_outputs`)."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        fail(f"--opset must be in [{MIN_OPSET}, {MAX_OPSET}] (the opsets the exporter supports), got {opset}")
    check_at_least("--seq-len", seq_len, 1, MAX_SEQ_LEN)
    check_at_least("--calib-samples", calib_samples, 1, MAX_BATCH)  # one batch
    check_at_least("--threads", threads, 1, MAX_THREADS)
    family = model_family(model)
    io = family_io(family)
    positions = model_positions(model) if io is not None and io.variable_length else None
    if target == "tflite" and positions is not None and seq_len > positions:
        fail(f"--seq-len {seq_len} is over the model's {positions} positions (max_position_embeddings)")
    if calib is not None:
        check_data_kind(family, calib, "--calib")
    sources = list(inputs)
    check_output_file("--out", out, sources, suffixes=[".onnx" if target == "onnx" else ".tflite"])
    files = export_outputs(out, target, quantized)
    for name, path in files[1:]:
        check_not_input(name, path, sources)
    if json_out is not None and str(json_out) != "-":
        check_output_file("--json", json_out, sources)
        check_distinct([*files, ("--json", json_out)])


def check_combination(
    target: str, quantize: str | None, fuse: bool, batch: int | str, slots: str | None
) -> None:
    """Options that exclude each other, refused before torch loads (the request's own check,
    ``export.pipeline.check_request``, ran only after the ~10 s import)."""
    if target == "tflite":
        if fuse:
            fail("--fuse is ONNX-only (it writes ONNX Runtime contrib ops)")
        if batch not in ("dynamic", 1):
            fail("TFLite exports have a static batch of 1 (the runtime runs a batch row by row)")
        if quantize == "int8-static":
            fail("TFLite supports --quantize int8 (dynamic-range weights); int8-static is ONNX-only")
    elif slots is not None:
        fail(
            f"--slots {slots} applies to --target tflite (ONNX runs every layer on its data-dependent count)"
        )
