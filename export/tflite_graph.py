"""The graph side of the TFLite export: a back-tracking LiteRT can run, the wrapper, the converter.

Kept apart from :mod:`sttabt_edge.export.tflite` (files, verification) so each stays small.
Everything here is an export-time switch: the library is called unchanged, except that the
top-k back-tracking takes its per-sample k from a constant table (see
``k_table`` of :func:`sttabt_edge.method.backtrack.topk_backtrack`), because LiteRT has no
float64 CEIL.

The converter, the quantizer and the interpreter are quiet unless asked (:func:`quiet_litert`):
their progress lines and C++ INFO logs are not about the user's model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, TypeAlias, get_args

import torch
from torch import nn

from sttabt_edge.compat import model_parts
from sttabt_edge.errors import ExportError
from sttabt_edge.export.graph import ExportModule
from sttabt_edge.export.tflite_slots import SlotReducer
from sttabt_edge.export.tflite_xnnpack import delegable_matmuls
from sttabt_edge.method.backtrack import (
    Backtrack,
    keep_table,
    ratio_schedule,
    topk_backtrack,
    topk_sizes,
)
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.spec import exportable_kinds
from sttabt_edge.reducers.sttabt import SttabtReducer
from sttabt_edge.sparse_model import SparseClassifier

SUPPORTED = exportable_kinds("tflite")
QUANT_MODES = ("int8",)
QUANT_OPS = ("FULLY_CONNECTED", "CONV_2D", "EMBEDDING_LOOKUP")  # weights only; never BATCH_MATMUL
# The ApproxNet's ops (their output tensors are named after its module path) stay float, as in ONNX
# INT8: its maps decide which tokens survive, so an int8 ApproxNet would change the kept sets (and,
# with the union rule, their sizes); it holds about 1/64 of the weights at widths / 8.
APPROX_SCOPE = r"sttabt_edge\.method\.approxnet\."
# How an INT8 file stores the ApproxNet's weights. float16 (computed in float32 behind a DEQUANTIZE,
# which XNNPACK takes) saves 0.17 MB of DeiT-Tiny's 6.8 MB but moves near-tied tokens: its kept
# counts left PyTorch's, so the exporter refuses it there; float32 is the default (docs/export.md)
ApproxWeights: TypeAlias = Literal["float32", "float16"]
APPROX_WEIGHTS: tuple[ApproxWeights, ...] = get_args(ApproxWeights)
APPROX_WEIGHTS_DEFAULT: ApproxWeights = "float32"
Sample = dict[str, torch.Tensor]  # one static-shape input: (1, ...) per contract name
log = logging.getLogger(__name__)
# litert-torch prints a "[START] ... [ DONE]" line per conversion step unless this is off
LITERT_ENV = {"LITERT_TORCH_SHOW_PROGRESS": "n"}
# What LiteRT's C++ writes to fd 2 that is not about the model: the converter's absl INFO lines on
# load and per conversion ("I0000 00:00:... port.cc:153] oneDNN custom operations are on",
# "flatbuffer_export.cc:...] Estimated count of arithmetic ops"), absl's notice that it has no log
# sink yet, and the interpreter's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
LITERT_NOISE = re.compile(
    rb"I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\]]*\] .*"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
)


# ---- the TFLite-safe back-tracking ----------------------------------------------------------


class StaticTopkReducer(SttabtReducer):
    """An STTABT top-k reducer for a fixed token count N: constant k table, static sizes."""

    keep_ratio: list[float]  # always a per-layer schedule here (SttabtReducer allows a scalar or None)
    table: torch.Tensor  # buffer: the constant k table

    def __init__(self, source: SttabtReducer, ratios: Sequence[float], n_tokens: int, num_prefix_tokens: int):
        super().__init__(
            source.approx,
            keep_ratio=list(ratios),
            p=source.p,
            head_reduce=source.head_reduce,
            nesting=source.nesting,
            min_keep=source.min_keep,
        )
        self.n_tokens = n_tokens
        self.sizes = [
            int(s) for s in topk_sizes(n_tokens, list(ratios), num_prefix_tokens, self.nesting, self.min_keep)
        ]
        self.register_buffer("table", keep_table(ratios, n_tokens), persistent=False)

    def backtrack(
        self, parts: Any, inputs: Mapping[str, torch.Tensor], x: torch.Tensor, pad_mask: torch.Tensor
    ) -> Backtrack:
        assert self.approx is not None  # check_supported refuses STTABT without an ApproxNet
        attn = self.approx.attentions(inputs)  # L x (B, H, R, N)
        if x.shape[1] != self.n_tokens or attn[0].shape[-1] != self.n_tokens:
            raise ExportError(f"static reducer built for {self.n_tokens} tokens, got {x.shape[1]}")
        bt = topk_backtrack(
            attn,
            pad_mask,
            self.keep_ratio,
            parts.num_prefix_tokens,
            self.p,
            self.head_reduce,
            k_table=self.table,
            nesting=self.nesting,
            min_keep=self.min_keep,
        )
        return Backtrack(bt.keep, list(self.sizes), bt.scores, bt.same)

    def keep_plan(self, parts: Any, bt: Backtrack, static: bool = True) -> Any:
        """Fixed slots (LiteRT needs static shapes): data-dependent counts are masked inside them."""
        return super().keep_plan(parts, bt, static=True)


# ---- which reducer the file computes ---------------------------------------------------------


def check_supported(reducer: Reducer) -> str:
    """The reducer's name if LiteRT can run it, else an ExportError that says what to do instead."""
    name = getattr(reducer, "name", type(reducer).__name__)
    if name not in SUPPORTED:
        raise ExportError(
            f"TFLite export supports {', '.join(SUPPORTED)}; {name!r} needs a float64 ceil or data-dependent "
            "token counts inside its layer loop, which LiteRT cannot run. Export it to ONNX instead."
        )
    if isinstance(reducer, SttabtReducer) and reducer.approx is None:
        raise ExportError(
            "STTABT TFLite export needs an ApproxNet (the self-attention oracle is a dense pass)"
        )
    return name


def static_reducer(
    model: nn.Module, reducer: Reducer, n_tokens: int, slots: Mapping[str, Any] | None
) -> Reducer:
    """What goes into the graph: dense as is; STTABT on static per-layer sizes for N tokens.

    Top-k runs on the constant k table (:class:`StaticTopkReducer`); thresholds as trained. With
    capped ``slots`` (:func:`~sttabt_edge.export.tflite_slots.plan_slots`), or for thresholds (no
    static size of their own), the masks are cut to the recorded slots (:class:`SlotReducer`).
    """
    if check_supported(reducer) == "dense":
        return reducer
    assert isinstance(reducer, SttabtReducer)  # check_supported: the TFLite kinds are dense and sttabt
    source: SttabtReducer = reducer
    if reducer.thresholds is None:
        parts = model_parts(model)
        ratios = ratio_schedule(reducer.keep_ratio, len(parts.layers))  # type: ignore[arg-type]
        source = StaticTopkReducer(reducer, ratios, n_tokens, parts.num_prefix_tokens).eval()
        if slots is None or not any(slots["capped"]):
            return source
    if slots is None:
        raise ExportError("a threshold model needs static slots for LiteRT (plan_slots)")
    return SlotReducer(source, slots["sizes"], slots["capped"], static=True).eval()


# ---- conversion -----------------------------------------------------------------------------


class TfliteModule(nn.Module):
    """Keyword inputs named by the contract → {"logits": (1, K) float, "kept_counts": (1, L) int32}.

    Keyword arguments and a dict output make litert-torch name the signature's tensors
    ``input_ids``/``logits``..., which the runtime maps by name.
    """

    def __init__(self, sc: SparseClassifier):
        super().__init__()
        self.inner = ExportModule(sc)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        given = {
            "pixel_values": pixel_values,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }
        logits, kept = self.inner(*(given[n] for n in self.inner.input_names))
        return {"logits": logits, "kept_counts": kept.to(torch.int32)}


def litert_verbose() -> bool:
    """Whether the user asked for LiteRT's own output: DEBUG logging for this module
    (``logging.getLogger("sttabt_edge").setLevel(logging.DEBUG)``, or a DEBUG root logger)."""
    return log.isEnabledFor(logging.DEBUG)


def _flush_stderr() -> None:
    """Python's buffered stderr out to fd 2 (it may be None, closed or a plain object)."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stderr.flush()


@contextlib.contextmanager
def _noise_dropped() -> Iterator[None]:
    """fd 2 (where C++ writes) held in a temp file for the block, then written back without the
    :data:`LITERT_NOISE` lines: everything else (errors, Python warnings) still reaches stderr."""
    _flush_stderr()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (a daemon, pythonw): nothing to hold back
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().splitlines(keepends=True)
            kept = [line for line in lines if not LITERT_NOISE.fullmatch(line.rstrip(b"\r\n"))]
            out = memoryview(b"".join(kept))
            with contextlib.suppress(OSError):  # a stderr closed meanwhile must not hide the block's error
                while out:  # os.write may write less than asked (a pipe)
                    out = out[os.write(2, out) :]


@contextlib.contextmanager
def quiet_litert(verbose: bool | None = None) -> Iterator[None]:
    """litert-torch's step lines and LiteRT's C++ INFO lines off for the block, unless ``verbose``
    (None: :func:`litert_verbose`). A variable of :data:`LITERT_ENV` the user set is left as it
    is; the environment and fd 2 are restored on exit, and only the known INFO lines are dropped
    from what C++ wrote there (:data:`LITERT_NOISE`)."""
    if verbose is None:
        verbose = litert_verbose()
    if verbose:
        yield
        return
    added = {k: v for k, v in LITERT_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        with _noise_dropped():
            yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def litert_torch_module() -> Any:
    """``import litert_torch`` (its first import loads the converter, which logs at load: quieted)."""
    with quiet_litert():
        import litert_torch

    return litert_torch


def convert(module: nn.Module, sample: Sample, delegable: bool = True) -> bytes:
    """litert_torch.convert with static shapes (the sample's); returns the flatbuffer.

    ``delegable``: products on computed weights as BATCH_MATMUL, which XNNPACK runs
    (:func:`~sttabt_edge.export.tflite_xnnpack.delegable_matmuls`); off only to measure that.
    """
    litert_torch = litert_torch_module()
    try:
        with torch.no_grad(), quiet_litert():
            flat = bytes(litert_torch.convert(module.eval(), sample_kwargs=dict(sample)).model_content())
    except Exception as e:
        raise ExportError(f"litert-torch conversion failed: {type(e).__name__}: {e}") from e
    return delegable_matmuls(flat)[0] if delegable else flat


def check_quantize(mode: str | None, approx_weights: str) -> None:
    """Refuse an unknown quantization or ApproxNet storage before the (minutes-long) conversion."""
    if mode is not None and mode not in QUANT_MODES:
        raise ExportError(f"quantize must be one of {QUANT_MODES} or None, got {mode!r}")
    if approx_weights not in APPROX_WEIGHTS:
        raise ExportError(f"approx_weights must be one of {APPROX_WEIGHTS}, got {approx_weights!r}")


def quantize_bytes(
    flatbuffer: bytes, mode: str = "int8", approx_weights: ApproxWeights = APPROX_WEIGHTS_DEFAULT
) -> bytes:
    """Dynamic-range int8 (per-channel weights) of the QUANT_OPS via ai-edge-quantizer, except the
    ApproxNet's (:data:`APPROX_SCOPE`): its weights stay float32 or are stored as float16
    (``approx_weights``; weight-only, computed in float32); the rest stays float."""
    check_quantize(mode, approx_weights)
    from ai_edge_quantizer import quantizer, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    manager = recipe_manager.RecipeManager()
    for op in QUANT_OPS:
        manager.add_dynamic_config(regex=".*", operation_name=op, num_bits=8)
    for op in QUANT_OPS:  # the later, narrower scope wins
        if approx_weights == "float16":
            cast = AlgorithmName.FLOAT_CASTING
            manager.add_weight_only_config(APPROX_SCOPE, op, num_bits=16, algorithm_key=cast)
        else:
            manager.add_quantization_config(APPROX_SCOPE, op, algorithm_key=AlgorithmName.NO_QUANTIZE)
    q = quantizer.Quantizer(bytearray(flatbuffer), manager.get_quantization_recipe())
    # ai-edge-quantizer 0.10 drops enable_progress_bar on its way to the model modifier, whose tqdm bar
    # then shows for any model with 100+ tensors: its stderr is held back (and shown if it fails)
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(sys.stderr if litert_verbose() else held):
            result = q.quantize(enable_progress_bar=False, enable_progress_report=False)
    except BaseException:
        with contextlib.suppress(
            AttributeError, OSError, ValueError
        ):  # no usable stderr: the error still raises
            sys.stderr.write(held.getvalue())
        raise
    return bytes(result.quantized_model)


def approx_weights_record(
    reducer: Reducer, quantize: str | None, approx_weights: ApproxWeights
) -> ApproxWeights | None:
    """What the sidecar says the ApproxNet's weights are: None without one, float32 unquantized."""
    if not isinstance(reducer, SttabtReducer) or reducer.approx is None:
        return None
    return approx_weights if quantize is not None else "float32"
