"""The seal: one digest over everything the runtime reads for a model (docs/security.md).

A digest over the graph alone let an edited metadata (labels, mean/std), a second metadata
entry, an edited TFLite sidecar, an edited external-data file or a swapped tokenizer answer
silently. The seal hashes, in one sha256:

- the model: for ONNX every byte of the ``.onnx`` file except the one ``sttabt_edge`` metadata
  record (graph, weights, opsets, other metadata entries); for TFLite the whole ``.tflite`` file;
- every external-data file the ONNX graph's initializers name (whole files, by name);
- the tokenizer file a text model's metadata names;
- the metadata text itself, byte for byte: everything before the digest, which the exporter
  writes as the fixed last entry ``, "digest": "sha256:<64 hex>"}``.

Pure Python (hashlib, json, re): the runtime reads only the protobuf framing, never the graph.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sttabt_edge.runtime.contract import DIGEST_KEY, DIGEST_PREFIX, METADATA_KEY

SEAL_TAG = b"sttabt-edge seal 2\n"  # domain separation: a seal is never equal to a plain file hash
_HEAD = f', "{DIGEST_KEY}": "'
_SUFFIX = re.compile(re.escape(_HEAD) + "(" + re.escape(DIGEST_PREFIX) + r'[0-9a-f]{64})"\}')
_SUFFIX_LEN = len(_HEAD) + len(DIGEST_PREFIX) + 64 + len('"}')
_CHUNK = 1 << 20
# onnx.proto field numbers (ModelProto, GraphProto, TensorProto, SparseTensorProto, StringStringEntry)
_MODEL_GRAPH, _MODEL_METADATA = 7, 14
_GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 5, 15
_TENSOR_DIMS, _TENSOR_NAME, _TENSOR_EXTERNAL = 1, 8, 13
_ENTRY_KEY, _ENTRY_VALUE = 1, 2

Component = tuple[str, str]  # (what was hashed, sha256 hex)


# ---- protobuf framing ---------------------------------------------------------------------------


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


def protobuf_fields(buf: memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """Top-level fields of a protobuf message: (field, wire type, start, payload start, end).

    Only the framing is read (a few records per tensor), never the data inside."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ValueError(f"protobuf field number 0 at byte {start}")
        payload = pos
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 2:
            length, payload = _varint(buf, pos)
            pos = payload + length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {start}")
        if pos > len(buf):
            raise ValueError(f"protobuf field {field} runs past the end of the file (truncated?)")
        yield field, wire, start, payload, pos


def _strings(buf: memoryview) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for field, wire, _, payload, end in protobuf_fields(buf):
        out.setdefault(field, []).append(bytes(buf[payload:end]) if wire == 2 else b"")
    return out


# ---- the ONNX file's layout ---------------------------------------------------------------------


@dataclass(frozen=True)
class MetadataEntry:
    record: tuple[int, int]  # the metadata_props record in the file (left out of the model hash)
    value: tuple[int, int]  # the metadata text's bytes
    fields: int  # sub-fields of the entry: exactly 2 (one key, one value) when well formed


@dataclass(frozen=True)
class OnnxLayout:
    """What the runtime needs from an ONNX file's framing, read without parsing the graph."""

    entries: tuple[MetadataEntry, ...]  # every sttabt_edge metadata entry (exactly one is allowed)
    external: tuple[str, ...]  # external-data locations named by the graph's initializers
    position_table: int | None  # rows of a 2-D "position_embeddings" initializer (text graphs)


def _tensor(buf: memoryview, external: set[str], tables: list[int]) -> None:
    fields = _strings(buf)
    for entry in fields.get(_TENSOR_EXTERNAL, []):
        kv = _strings(memoryview(entry))
        if kv.get(_ENTRY_KEY, [b""])[-1] == b"location":
            external.add(kv.get(_ENTRY_VALUE, [b""])[-1].decode("utf-8", errors="replace"))
    name = fields.get(_TENSOR_NAME, [b""])[-1]
    if b"position_embeddings" in name:
        dims = [v for f, w, _, p, e in protobuf_fields(buf) if f == _TENSOR_DIMS for v in _ints(buf, w, p, e)]
        if len(dims) == 2:
            tables.append(dims[0])


def _ints(buf: memoryview, wire: int, payload: int, end: int) -> list[int]:
    """An int64 field's values: one varint (wire 0) or a packed run of them (wire 2)."""
    if wire == 0:
        return [_varint(buf, payload)[0]]
    values, pos = [], payload
    while pos < end:
        value, pos = _varint(buf, pos)
        values.append(value)
    return values


def onnx_layout(data: bytes | memoryview) -> OnnxLayout:
    """Metadata entries, external-data files and the position table; ValueError on bad framing."""
    buf = memoryview(data)
    entries: list[MetadataEntry] = []
    external: set[str] = set()
    tables: list[int] = []
    for field, _, start, payload, end in protobuf_fields(buf):
        if field == _MODEL_METADATA:
            sub = list(protobuf_fields(buf[payload:end]))
            keys = [bytes(buf[payload + p : payload + e]) for f, _, _, p, e in sub if f == _ENTRY_KEY]
            values = [(payload + p, payload + e) for f, _, _, p, e in sub if f == _ENTRY_VALUE]
            if keys and keys[-1] == METADATA_KEY.encode() and values:
                entries.append(MetadataEntry((start, end), values[-1], len(sub)))
        elif field == _MODEL_GRAPH:
            for g_field, _, _, g_payload, g_end in protobuf_fields(buf[payload:end]):
                tensor = buf[payload + g_payload : payload + g_end]
                if g_field == _GRAPH_INITIALIZER:
                    _tensor(tensor, external, tables)
                elif g_field == _GRAPH_SPARSE_INITIALIZER:  # values (1) and indices (2) are tensors
                    for s_field, _, _, s_payload, s_end in protobuf_fields(tensor):
                        if s_field in (1, 2):
                            _tensor(tensor[s_payload:s_end], external, tables)
    return OnnxLayout(tuple(entries), tuple(sorted(external)), min(tables) if tables else None)


def onnx_model_sha256(data: bytes | memoryview, layout: OnnxLayout) -> str:
    """sha256 hex of every byte of the file except its sttabt_edge metadata record(s)."""
    buf, h, pos = memoryview(data), hashlib.sha256(), 0
    for entry in sorted(layout.entries, key=lambda e: e.record):
        h.update(buf[pos : entry.record[0]])
        pos = entry.record[1]
    h.update(buf[pos:])
    return h.hexdigest()


def legacy_onnx_digest(data: bytes | memoryview) -> str:
    """The digest files exported before the seal carry: every top-level field but metadata_props."""
    buf, h = memoryview(data), hashlib.sha256()
    for field, _, start, _, end in protobuf_fields(buf):
        if field != _MODEL_METADATA:
            h.update(buf[start:end])
    return DIGEST_PREFIX + h.hexdigest()


# ---- components and the seal --------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tokenizer_name(meta: Mapping[str, Any]) -> str | None:
    """The tokenizer file a text model's metadata names (None for image models)."""
    pre = meta.get("preprocess")
    text = pre.get("text") if isinstance(pre, Mapping) else None
    name = text.get("tokenizer_file") if isinstance(text, Mapping) else None
    return name if isinstance(name, str) else None


def components(
    model: Component, folder: Path, external: Sequence[str], tokenizer: str | None
) -> list[Component]:
    """What a seal covers besides the metadata text, in a fixed order. The companion files are read
    from ``folder``; a missing one raises FileNotFoundError naming it."""
    out = [model]
    for name in sorted(external):
        out.append((f"external-data {json.dumps(name)}", file_sha256(folder / name)))
    if tokenizer is not None:
        out.append((f"tokenizer {json.dumps(tokenizer)}", file_sha256(folder / tokenizer)))
    return out


def seal_digest(parts: Sequence[Component], metadata_prefix: bytes) -> str:
    """The seal over ``parts`` and the metadata text before its digest."""
    h = hashlib.sha256(SEAL_TAG)
    for what, hexdigest in parts:
        h.update(f"{what} {hexdigest}\n".encode())
    h.update(f"metadata {hashlib.sha256(metadata_prefix).hexdigest()}\n".encode())
    return DIGEST_PREFIX + h.hexdigest()


def sealed_text(meta: Mapping[str, Any], parts: Sequence[Component], indent: int | None = None) -> str:
    """``meta`` as JSON (any old digest dropped) ending in the seal over ``parts`` and its own bytes."""
    body = json.dumps(
        {k: v for k, v in meta.items() if k != DIGEST_KEY}, ensure_ascii=False, allow_nan=False, indent=indent
    )
    prefix = body[:-1].rstrip()
    if prefix in ("", "{"):
        raise ValueError("cannot seal empty metadata")
    return f'{prefix}{_HEAD}{seal_digest(parts, prefix.encode())}"}}'


def split_sealed(text: str) -> tuple[str, bytes] | None:
    """(digest, the bytes it seals) when ``text`` ends the way :func:`sealed_text` writes it."""
    match = _SUFFIX.fullmatch(text[-_SUFFIX_LEN:])
    if match is None:
        return None
    return match.group(1), text[:-_SUFFIX_LEN].encode()
