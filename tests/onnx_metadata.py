"""The sttabt_edge metadata entry of an ONNX file, edited at the protobuf level (any bytes, even
invalid UTF-8, and nothing resealed): for the seal tests and the #28 audit script alike."""

from __future__ import annotations

from sttabt_edge.runtime import contract, seal


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def metadata_entry(value: bytes, key: bytes = contract.METADATA_KEY.encode()) -> bytes:
    """A ModelProto.metadata_props record (field 14: key 1, value 2)."""
    return field(14, field(1, key) + field(2, value))


def metadata_of(data: bytes) -> bytes:
    """The text of the file's one sttabt_edge entry."""
    start, end = seal.onnx_layout(data).entries[0].value
    return data[start:end]


def with_metadata(data: bytes, value: bytes) -> bytes:
    """The file with its one sttabt_edge entry's text replaced by ``value`` (nothing resealed)."""
    start, end = seal.onnx_layout(data).entries[0].record
    return data[:start] + metadata_entry(value) + data[end:]
