"""The exported-model contract (docs/onnx_contract.md), owned by the torch-free runtime.

One JSON object describes an exported model: ONNX keeps it in ``metadata_props["sttabt_edge"]``,
TFLite in the sidecar ``<file>.json``. The exporter checks what it writes against
:func:`metadata_problems` and the predictor checks every file it opens with the same function,
so a hand-edited or damaged file is refused with one clear message instead of answering
wrongly. The ``digest`` field seals the metadata to the files it was written with (:mod:`.seal`).

Pure Python (json, pathlib): importable without torch, numpy or onnx.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Literal

METADATA_KEY = "sttabt_edge"
FORMAT_VERSION = 1
DIGEST_KEY = "digest"
DIGEST_PREFIX = "sha256:"


# ---- what a graph of each family takes and returns ----------------------------------------------


@dataclass(frozen=True)
class TensorIO:
    """One graph input or output: its contract name, element type and dynamic axes."""

    name: str
    dtype: Literal["float32", "int64"]  # as the ONNX graph carries it (TFLite: integers are int32)
    axes: tuple[tuple[int, str], ...]  # (dim, name) of each axis that varies between runs, batch first
    required: bool = True  # False: a graph (and a feed) may leave it out
    fill: int | None = None  # the value it takes where a batch lacks it (exporter: an all-real mask)


@dataclass(frozen=True)
class FamilyIO:
    """A model family's I/O, in the manner of Optimum's export configs: the one place that says what
    differs between image (ViT, DeiT) and text (BERT) models. The runtime checks graphs and feeds
    against it and the exporter builds its example inputs, dynamic axes, static lengths and files
    from it (the exporter has no ``family ==`` of its own; tests/architecture/test_architecture.py)."""

    family: str
    task: str
    preprocess: Literal["image", "text"]  # the metadata's preprocess entry (and the tokenizer file)
    inputs: tuple[TensorIO, ...]  # in contract (positional) order
    outputs: tuple[TensorIO, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def required_inputs(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs if t.required)

    @property
    def text(self) -> bool:
        """Inputs are token ids from a tokenizer (its file travels with the model)."""
        return self.preprocess == "text"

    @property
    def variable_length(self) -> bool:
        """The token count varies between inputs (a ``sequence`` axis), as opposed to an image's
        fixed number of patches: shapes derived from it cannot be frozen at the example's."""
        return any(name == SEQUENCE for t in self.inputs for _, name in t.axes)


BATCH, SEQUENCE = "batch", "sequence"  # the dynamic axes' names in exported graphs
OUTPUTS = (
    TensorIO("logits", "float32", ((0, BATCH),)),  # (B, labels)
    TensorIO("kept_counts", "int64", ((0, BATCH),), required=False),  # (B, layers): tokens entering each
)
_TEXT_AXES = ((0, BATCH), (1, SEQUENCE))
FAMILY_IO: dict[str, FamilyIO] = {
    "vit": FamilyIO(
        "vit",
        "image-classification",
        "image",
        (TensorIO("pixel_values", "float32", ((0, BATCH),)),),  # (B, 3, H, W)
        OUTPUTS,
    ),
    "bert": FamilyIO(
        "bert",
        "text-classification",
        "text",
        (  # each (B, N), right-padded
            TensorIO("input_ids", "int64", _TEXT_AXES),
            TensorIO("attention_mask", "int64", _TEXT_AXES, fill=1),
            TensorIO("token_type_ids", "int64", _TEXT_AXES, required=False, fill=0),
        ),
        OUTPUTS,
    ),
}
TASKS = {f: io.task for f, io in FAMILY_IO.items()}
# every contract input by name (names are unique across families): its family and description
CONTRACT_INPUTS = {t.name: (io, t) for io in FAMILY_IO.values() for t in io.inputs}
INPUT_NAMES = {f: io.input_names for f, io in FAMILY_IO.items()}  # contract order
REQUIRED_INPUTS = {f: io.required_inputs for f, io in FAMILY_IO.items()}
OUTPUT_NAMES = tuple(t.name for t in OUTPUTS)  # kept_counts is optional
REQUIRED_KEYS = (
    "format_version",
    "task",
    "family",
    "method",
    "labels",
    "num_layers",
    "num_prefix_tokens",
    "keep_schedule",
    "thresholds",
    "approx_factor",
    "preprocess",
    "source_model",
    "exporter",
)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
# Bounds on every size a file can ask for: metadata must not make a device allocate without limit.
MAX_IMAGE_SIZE = 2048  # the model's input side (pixel_values is 3 x S x S floats)
MAX_RESIZE_SIZE = 4096  # shorter side before the centre crop
MAX_TEXT_LENGTH = 65_536  # tokens (the position table)
MAX_LAYERS = 1024
MAX_LABELS = 1_000_000
MAX_VOCAB = 10_000_000
MAX_PREFIX_TOKENS = 16
MAX_APPROX = 1024  # ApproxNet width divisor and head count
MAX_RESIZE_RATIO = 2  # resize_size <= 2 x image_size (timm's smallest crop_pct is far above 0.5)
MAX_METADATA_BYTES = 1 << 20  # checked before the JSON is decoded (a 300 MB string took 1.27 GB)
_SHOWN_PROBLEMS = 4

Check = Callable[[Any], "str | None"]  # None when the value is fine, else what is wrong with it


def family_io(family: object) -> FamilyIO | None:
    """``FAMILY_IO[family]``, or None for an unknown family or a non-string (a damaged file's
    ``family`` can be a list, which ``family in FAMILY_IO`` would raise TypeError on)."""
    return FAMILY_IO.get(family) if isinstance(family, str) else None


# ---- small validators ---------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _int(lo: int, hi: int) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be an integer, got {_show(v)}"
        return None if lo <= v <= hi else f"must be in [{lo}, {hi}], got {v}"

    return check


def _number(lo: float, hi: float, lo_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"must be a finite number, got {_show(v)}"
        ok = (lo < v if lo_open else lo <= v) and v <= hi
        return None if ok else f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}"

    return check


def _string(nonempty: bool = True) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, str):
            return f"must be a string, got {_show(v)}"
        return "must not be empty" if nonempty and not v else None

    return check


def _one_of(*allowed: Any) -> Check:
    def check(v: Any) -> str | None:
        return (
            None if isinstance(v, str) and v in allowed else f"must be one of {list(allowed)}, got {_show(v)}"
        )

    return check


def _list(item: Check, min_len: int, max_len: int) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, list):
            return f"must be a list, got {_show(v)}"
        if not min_len <= len(v) <= max_len:
            return f"must have {min_len} to {max_len} entries, got {len(v)}"
        for i, x in enumerate(v):
            if (problem := item(x)) is not None:
                return f"[{i}] {problem}"
        return None

    return check


def _nullable(inner: Check) -> Check:
    return lambda v: None if v is None else inner(v)


def _object(v: Any) -> str | None:
    return None if isinstance(v, dict) else f"must be an object, got {_show(v)}"


def _digest(v: Any) -> str | None:
    ok = isinstance(v, str) and re.fullmatch(re.escape(DIGEST_PREFIX) + "[0-9a-f]{64}", v) is not None
    return None if ok else f"must be '{DIGEST_PREFIX}' and 64 lowercase hex digits, got {_show(v)}"


def plain_file_name(v: Any) -> str | None:
    """A name beside the model file: no folder part, no '..', not absolute (POSIX or Windows)."""
    if not isinstance(v, str) or not v:
        return f"must be a file name, got {_show(v)}"
    plain = PurePosixPath(v).name == v and PureWindowsPath(v).name == v and v not in (".", "..")
    if not plain or "\x00" in v:
        return f"must be a plain file name beside the model (no folders, '..' or absolute paths), got {v!r}"
    return None


# ---- the schema ---------------------------------------------------------------------------------

_IMAGE_KEYS: dict[str, Check] = {
    "image_size": _int(1, MAX_IMAGE_SIZE),
    "resize_size": _int(1, MAX_RESIZE_SIZE),
    "interpolation": _one_of(*INTERPOLATIONS),
    "mean": _list(_number(-1e6, 1e6), 3, 3),
    "std": _list(_number(0.0, 1e6, lo_open=True), 3, 3),
}
_TEXT_KEYS: dict[str, Check] = {"tokenizer_file": plain_file_name, "max_length": _int(1, MAX_TEXT_LENGTH)}


def _fields(
    obj: dict[str, Any], checks: Mapping[str, Check], where: str, required: tuple[str, ...]
) -> list[str]:
    missing = [f"{where}.{k} is missing" for k in required if k not in obj]
    wrong = [f"{where}.{k} {p}" for k, c in checks.items() if k in obj and (p := c(obj[k])) is not None]
    return missing + wrong


def _image_problems(image: Any) -> list[str]:
    if not isinstance(image, dict):
        return [f"preprocess.image {_object(image)}"]
    unknown = sorted(set(image) - set(_IMAGE_KEYS))
    problems = [f"preprocess.image has unknown keys {unknown}"] if unknown else []
    problems += _fields(image, _IMAGE_KEYS, "preprocess.image", ())
    size, resize = image.get("image_size", 224), image.get("resize_size", 256)
    if not problems and size > resize:
        problems.append(f"preprocess.image.image_size {size} exceeds resize_size {resize}")
    if not problems and resize > MAX_RESIZE_RATIO * size:
        problems.append(
            f"preprocess.image.resize_size {resize} is over {MAX_RESIZE_RATIO} x image_size {size}"
        )
    return problems


def _preprocess_problems(pre: Any, family: Any) -> list[str]:
    if not isinstance(pre, dict):
        return [f"preprocess {_object(pre)}"]
    io = family_io(family)
    want = io.preprocess if io is not None else None
    if want is not None and set(pre) != {want}:
        return [f"preprocess must hold exactly one entry '{want}' for family {family!r}, got {sorted(pre)}"]
    if "image" in pre:
        return _image_problems(pre["image"])
    text = pre.get("text")
    if not isinstance(text, dict):
        return [f"preprocess.text {_object(text)}"]
    return _fields(text, _TEXT_KEYS, "preprocess.text", ("tokenizer_file", "max_length"))


_TOP_LEVEL: dict[str, Check] = {
    "task": _one_of(*TASKS.values()),
    "family": _one_of(*TASKS),
    "method": _string(),
    "labels": _list(_string(nonempty=False), 1, MAX_LABELS),
    "num_layers": _int(1, MAX_LAYERS),
    "num_prefix_tokens": _int(0, MAX_PREFIX_TOKENS),
    "keep_schedule": _nullable(_list(_number(0.0, 1.0, lo_open=True), 1, MAX_LAYERS)),
    "thresholds": _nullable(_list(_number(-1e6, 1e6), 1, MAX_LAYERS)),
    "approx_factor": _nullable(_int(1, MAX_APPROX)),
    "source_model": _string(nonempty=False),
    "exporter": _object,
    # optional keys: absent in older files; any other key is allowed and not checked (additive keys
    # such as a method's own settings keep format_version 1)
    "approx_heads": _nullable(_int(1, MAX_APPROX)),
    "vocab_size": _nullable(_int(1, MAX_VOCAB)),
    "type_vocab_size": _nullable(_int(1, MAX_VOCAB)),
    "quantization": _nullable(_string()),
    "approx": _nullable(_object),
    "tflite": _nullable(_object),
    DIGEST_KEY: _digest,
}


def metadata_problems(meta: Any) -> list[str]:
    """Everything wrong with ``meta`` against the contract (empty when it conforms)."""
    if not isinstance(meta, dict):
        return [f"metadata must be a JSON object, got {_show(meta)}"]
    if meta.get("format_version") != FORMAT_VERSION:
        return [
            f"metadata format_version {meta.get('format_version')!r}, this runtime reads {FORMAT_VERSION}"
        ]
    problems = [f"{k} is missing" for k in REQUIRED_KEYS if k not in meta]
    problems += [f"{k} {p}" for k, c in _TOP_LEVEL.items() if k in meta and (p := c(meta[k])) is not None]
    family = meta.get("family")  # any JSON value: checked as a string above, looked up safely here
    io = family_io(family)
    if io is not None and meta.get("task") in TASKS.values() and meta["task"] != io.task:
        problems.append(f"task {meta['task']!r} does not match family {family!r}")
    if "preprocess" in meta:
        problems += _preprocess_problems(meta["preprocess"], family)
    layers = meta.get("num_layers")
    for key in ("keep_schedule", "thresholds"):
        value = meta.get(key)
        if isinstance(value, list) and isinstance(layers, int) and len(value) != layers:
            problems.append(f"{key} has {len(value)} entries for {layers} layers")
    return problems


def summarize(problems: list[str]) -> str:
    """One line: the first few problems and how many more there are."""
    more = len(problems) - _SHOWN_PROBLEMS
    return "; ".join(problems[:_SHOWN_PROBLEMS]) + (f" (and {more} more)" if more > 0 else "")


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads keeps the last of duplicate keys; a metadata with two ``labels`` is refused instead."""
    out = dict(pairs)
    if len(out) != len(pairs):
        dup = next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i]))
        raise _DuplicateKey(f"metadata repeats the key {dup!r}")
    return out


def parse_metadata(text: str) -> tuple[Any, list[str]]:
    """(decoded JSON, problems); invalid JSON, a repeated key or an oversized text is a problem,
    never an exception."""
    if len(text) > MAX_METADATA_BYTES:
        return None, [f"metadata is {len(text)} characters, over the {MAX_METADATA_BYTES}-byte limit"]
    try:
        meta = json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        return None, [str(e)]
    except (json.JSONDecodeError, RecursionError) as e:
        return None, [f"metadata is not valid JSON ({e})"]
    return meta, metadata_problems(meta)
