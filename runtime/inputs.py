"""Input tensors checked against the contract before any engine sees them.

The exported graphs are exact on in-contract inputs and undefined outside it: a token id past
the vocabulary, a left-padded or all-padding row, NaN pixels or a sequence longer than the
position table either crash deep inside ONNX Runtime / LiteRT or come back as a confident
wrong answer. Each check here is a few vectorised numpy reductions over the batch, so it
costs microseconds next to the model, and each failure is one :class:`InputError` line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from sttabt_edge.errors import InputError
from sttabt_edge.runtime.contract import FAMILY_IO

_SHOWN_ROWS = 5
Shape = tuple[int | None, ...]  # None: a dynamic axis


@dataclass(frozen=True)
class InputSpec:
    """What one loaded model accepts; built from its metadata and its graph's input shapes."""

    family: str
    names: tuple[str, ...]  # the graph's inputs (contract names)
    shapes: Mapping[str, Shape] = field(default_factory=dict)
    image_size: int | None = None
    max_length: int | None = None  # text: the position table (ONNX) or the static length (TFLite)
    vocab_size: int | None = None
    type_vocab_size: int | None = None
    pads_text: bool = False  # TFLite: shorter text is right-padded up to the static length
    fixed_batch: int | None = None  # a graph exported with --batch N takes exactly N rows


def _rows(flags: npt.ArrayLike) -> str:
    idx = np.flatnonzero(flags).tolist()
    more = f" and {len(idx) - _SHOWN_ROWS} more" if len(idx) > _SHOWN_ROWS else ""
    return f"row{'s' if len(idx) > 1 else ''} {idx[:_SHOWN_ROWS]}{more}"


def _dims(shape: Shape) -> str:
    """(B, 3, 224, 224) / (B, N): dynamic axes by name, as the contract documents them."""
    names = ["B" if axis == 0 else "N" if d is None else str(d) for axis, d in enumerate(shape)]
    return "(" + ", ".join(names) + ")"


def _as_array(name: str, value: Any, kinds: str) -> np.ndarray:
    try:
        x = np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged nested lists and the like
        raise InputError(f"input {name} is not a rectangular array ({e})") from e
    if x.dtype.kind not in kinds:
        what = "floating-point numbers" if kinds == "f" else "integers"
        raise InputError(f"input {name} must hold {what}, got dtype {x.dtype}")
    return x


def _check_names(spec: InputSpec, inputs: Any) -> dict[str, Any]:
    """Every graph input present; contract inputs the graph does not take are dropped."""
    if not isinstance(inputs, Mapping):
        raise InputError(f"run() takes a dict of input name -> array, got {type(inputs).__name__}")
    known = set(FAMILY_IO[spec.family].input_names)
    unknown = sorted(str(k) for k in inputs if k not in spec.names and k not in known)
    if unknown:
        raise InputError(f"unknown input(s) {unknown}; this model takes {list(spec.names)}")
    missing = [n for n in spec.names if n not in inputs]
    if missing:
        raise InputError(f"missing input(s) {missing}; this model takes {list(spec.names)}")
    return {n: inputs[n] for n in spec.names}


def _check_shapes(spec: InputSpec, feed: Mapping[str, np.ndarray]) -> int:
    """Same batch everywhere, the right rank, and the graph's static dims. -> batch size."""
    batch = {x.shape[0] if x.ndim else None for x in feed.values()}
    if len(batch) != 1:
        raise InputError(f"inputs disagree on the batch size: { ({n: x.shape for n, x in feed.items()}) }")
    b = batch.pop()
    if not b:
        raise InputError("empty batch: give at least one row")
    if spec.fixed_batch is not None and b != spec.fixed_batch:
        raise InputError(f"this model was exported for batches of exactly {spec.fixed_batch}, got {b}")
    for name, x in feed.items():
        want = spec.shapes.get(name)
        if want is None:
            continue
        if x.ndim != len(want):
            raise InputError(f"input {name} must have {len(want)} dimensions, got shape {x.shape}")
        for axis in range(1, x.ndim):
            dim, got = want[axis], x.shape[axis]
            if dim is None or got == dim or (spec.pads_text and axis == 1 and got < dim):
                continue
            raise InputError(f"input {name} has shape {x.shape}; the model takes {_dims(want)}")
    return b


def _check_pixels(spec: InputSpec, x: np.ndarray) -> None:
    s = spec.image_size
    if x.ndim != 4 or x.shape[1] != 3 or (s is not None and x.shape[2:] != (s, s)):
        want = f"(B, 3, {s}, {s})" if s else "(B, 3, H, W)"
        raise InputError(f"pixel_values must have shape {want}, got {x.shape}")
    bad = ~np.isfinite(x).reshape(x.shape[0], -1).all(axis=1)
    if bad.any():
        raise InputError(f"pixel_values {_rows(bad)} hold NaN or infinite values")


def _check_range(name: str, x: np.ndarray, limit: int | None, what: str) -> None:
    """Ids index embedding tables: outside [0, limit) they read garbage or crash the engine."""
    low, high = int(x.min()), int(x.max())
    if low >= 0 and (limit is None or high < limit):
        return
    bad = (x < 0).any(axis=1) if limit is None else ((x < 0) | (x >= limit)).any(axis=1)
    bound = ">= 0" if limit is None else f"in [0, {limit - 1}]"
    raise InputError(f"{name} {_rows(bad)} hold {what} not {bound} (min {low}, max {high})")


def _check_text(spec: InputSpec, feed: Mapping[str, np.ndarray]) -> None:
    ids, mask = feed["input_ids"], feed["attention_mask"]
    for name, x in feed.items():
        if x.ndim != 2 or x.shape != ids.shape:
            raise InputError(f"{name} must be (B, N) like input_ids {ids.shape}, got {x.shape}")
    n = ids.shape[1]
    if n == 0:
        raise InputError("text inputs have no tokens (N = 0)")
    if spec.max_length is not None and n > spec.max_length:
        raise InputError(f"sequences are {n} tokens wide, over the model's {spec.max_length} positions")
    if ((mask != 0) & (mask != 1)).any():
        raise InputError("attention_mask must hold only 0 (padding) and 1 (real token)")
    left = (mask[:, 1:] > mask[:, :-1]).any(axis=1)
    if left.any():
        raise InputError(f"attention_mask {_rows(left)} are not right-padded (a real token follows padding)")
    empty = mask[:, 0] == 0
    if empty.any():
        raise InputError(
            f"attention_mask {_rows(empty)} are all padding: each row needs at least one real token"
        )
    _check_range("input_ids", ids, spec.vocab_size, "token ids")
    if "token_type_ids" in feed:
        _check_range("token_type_ids", feed["token_type_ids"], spec.type_vocab_size, "token types")


def check_inputs(spec: InputSpec, inputs: Any) -> dict[str, np.ndarray]:
    """The model's feed (contract names -> arrays, dtypes untouched) or one InputError line. What
    each input holds (floats or integers) and which checks apply come from the family's
    ``FAMILY_IO`` description."""
    io = FAMILY_IO[spec.family]
    raw = _check_names(spec, inputs)
    dtypes = {t.name: t.dtype for t in io.inputs}
    kinds = {"float32": "f", "int64": "iub"}
    feed = {name: _as_array(name, value, kinds[dtypes[name]]) for name, value in raw.items()}
    _check_shapes(spec, feed)
    if io.text:
        _check_text(spec, feed)
    else:
        _check_pixels(spec, feed[io.inputs[0].name])
    return feed
