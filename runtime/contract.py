"""The exported-model contract (docs/onnx_contract.md), owned by the torch-free runtime.

One JSON object describes an exported model: ONNX keeps it in ``metadata_props["sttabt_edge"]``,
TFLite in the sidecar ``<file>.json``. The exporter checks what it writes against
:func:`metadata_problems` and the predictor checks every file it opens with the same function,
so a hand-edited or damaged file is refused with one clear message instead of answering
wrongly. The ``digest`` field ties the metadata to the graph and weights it was written with.

Pure Python (hashlib, json, pathlib): importable without torch, numpy or onnx.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

METADATA_KEY = "sttabt_edge"
FORMAT_VERSION = 1
DIGEST_KEY = "digest"
DIGEST_PREFIX = "sha256:"
TASKS = {"vit": "image-classification", "bert": "text-classification"}
# graph inputs per family, in contract order; the first ones are required, token_type_ids is optional
INPUT_NAMES = {"vit": ("pixel_values",), "bert": ("input_ids", "attention_mask", "token_type_ids")}
REQUIRED_INPUTS = {"vit": ("pixel_values",), "bert": ("input_ids", "attention_mask")}
OUTPUT_NAMES = ("logits", "kept_counts")  # kept_counts is optional
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
_SHOWN_PROBLEMS = 4
_ONNX_METADATA_FIELD = 14  # ModelProto.metadata_props (onnx.proto)

Check = Callable[[Any], "str | None"]  # None when the value is fine, else what is wrong with it


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
    return problems


def _preprocess_problems(pre: Any, family: Any) -> list[str]:
    if not isinstance(pre, dict):
        return [f"preprocess {_object(pre)}"]
    want = {"vit": "image", "bert": "text"}.get(family)
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
    family = meta.get("family")
    if family in TASKS and meta.get("task") in TASKS.values() and meta["task"] != TASKS[family]:
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


def parse_metadata(text: str) -> tuple[Any, list[str]]:
    """(decoded JSON, problems); invalid JSON is a problem, never an exception."""
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        return None, [f"metadata is not valid JSON ({e})"]
    return meta, metadata_problems(meta)


# ---- digest -------------------------------------------------------------------------------------


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated protobuf varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("protobuf varint longer than 10 bytes")


def protobuf_records(buf: memoryview) -> Iterator[tuple[int, int, int, int]]:
    """Top-level fields of a protobuf message: (field number, start, payload start, end).

    Only the framing is read (never the graph inside), so this costs a few records per file."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ValueError(f"protobuf field number 0 at byte {start}")
        if wire == 0:
            _, pos = _varint(buf, pos)
            payload = pos
        elif wire == 2:
            length, payload = _varint(buf, pos)
            pos = payload + length
        elif wire in (1, 5):
            payload, pos = pos, pos + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {start}")
        if pos > len(buf):
            raise ValueError(f"protobuf field {field} runs past the end of the file (truncated?)")
        yield field, start, payload, pos


def onnx_digest(data: bytes | memoryview) -> str:
    """sha256 over every top-level ModelProto field except metadata_props: graph, weights,
    opsets and IR version are covered, and writing the metadata (digest included) does not move it."""
    buf, h = memoryview(data), hashlib.sha256()
    for field, start, _, end in protobuf_records(buf):
        if field != _ONNX_METADATA_FIELD:
            h.update(buf[start:end])
    return DIGEST_PREFIX + h.hexdigest()


def onnx_metadata_props(data: bytes | memoryview) -> dict[str, str]:
    """ModelProto.metadata_props as a dict, read from the serialized bytes without onnx."""
    buf, props = memoryview(data), {}
    for field, _, payload, end in protobuf_records(buf):
        if field != _ONNX_METADATA_FIELD:
            continue
        entry: dict[int, str] = {}
        for sub, _, sub_payload, sub_end in protobuf_records(buf[payload:end]):
            entry[sub] = bytes(buf[payload + sub_payload : payload + sub_end]).decode("utf-8")
        props[entry.get(1, "")] = entry.get(2, "")
    return props


def file_digest(data: bytes | memoryview) -> str:
    """sha256 of a whole file (TFLite: its metadata lives in the sidecar, outside the file)."""
    return DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


def digest_problem(meta: Mapping[str, Any], actual: str) -> str | None:
    """Why the file's digest does not vouch for it, or None when it matches."""
    expected = meta.get(DIGEST_KEY)
    bypass = "re-export it, or pass --no-verify-digest (verify_digest=False) to load it anyway"
    if expected is None:
        return f"its metadata has no digest (written before digests, or by hand); {bypass}"
    if expected != actual:
        return (
            f"digest mismatch (file {actual[:19]}..., metadata {str(expected)[:19]}...): the graph or weights "
            f"were corrupted or changed after export; {bypass}"
        )
    return None
