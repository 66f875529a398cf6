"""Read a model file's metadata and check it before any engine parses the graph.

The metadata tells the runtime what every answer means (labels, preprocessing), so it is held
to what the graph and weights are held to: bounded in size before it is decoded, exactly one
entry, valid against the contract, sealed with the model and its companion files
(:mod:`.seal`), and, once the engine reports the graph's inputs, consistent with them
(:func:`graph_problems`). Every refusal is one :class:`ModelFileError` line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sttabt_edge.errors import ModelFileError, one_line
from sttabt_edge.runtime import contract, seal

_BYPASS = "re-export it, or pass --no-verify-digest (verify_digest=False) to load it anyway"


@dataclass(frozen=True)
class ModelFile:
    meta: dict[str, Any]
    position_table: int | None = None  # ONNX text graphs: rows of the position embedding table


def read_bytes(path: Path) -> bytes:
    """The whole file, or one ModelFileError line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read it ({one_line(e)})") from e
    if not data:
        raise ModelFileError(f"{path}: empty file")
    return data


def _decode(raw: bytes | memoryview, source: Path) -> str:
    if len(raw) > contract.MAX_METADATA_BYTES:
        raise ModelFileError(
            f"{source}: its {contract.METADATA_KEY} metadata is {len(raw)} bytes, over the "
            f"{contract.MAX_METADATA_BYTES}-byte limit"
        )
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{source}: its metadata is not UTF-8 ({one_line(e)})") from e


def _parse(text: str, source: Path) -> dict[str, Any]:
    meta, problems = contract.parse_metadata(text)
    if problems:
        raise ModelFileError(
            f"{source}: invalid {contract.METADATA_KEY} metadata: {contract.summarize(problems)}"
        )
    return meta


def _check_external(external: tuple[str, ...], folder: Path, path: Path) -> None:
    """External-data files: plain names beside the model (never a path out of its folder), present."""
    for name in external:
        if (problem := contract.plain_file_name(name)) is not None:
            raise ModelFileError(f"{path}: external data location {problem}")
        if not (folder / name).is_file():
            raise ModelFileError(
                f"external data file {folder / name} (named by {path.name}'s graph) is missing"
            )


def _companions(
    model: seal.Component, folder: Path, external: tuple[str, ...], meta: Mapping[str, Any], path: Path
) -> list[seal.Component]:
    tokenizer = seal.tokenizer_name(meta)
    if tokenizer is not None and not (folder / tokenizer).is_file():
        raise ModelFileError(f"tokenizer {folder / tokenizer} (named in {path.name}'s metadata) is missing")
    try:
        return seal.components(model, folder, external, tokenizer)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read a file it names ({one_line(e)})") from e


def _check_seal(
    text: str, meta: Mapping[str, Any], parts: list[seal.Component], legacy: Callable[[], str], path: Path
) -> None:
    """The metadata's digest must be the seal over ``parts`` and the metadata's own bytes."""
    old = (
        "it was sealed by an older sttabt-edge, whose digest covered only the graph and weights "
        "(not the metadata, sidecar, external data or tokenizer); " + _BYPASS
    )
    found = seal.split_sealed(text)
    if found is None:
        if contract.DIGEST_KEY not in meta:
            raise ModelFileError(
                f"{path}: its metadata has no digest (written before digests, or by hand); {_BYPASS}"
            )
        if meta[contract.DIGEST_KEY] == legacy():
            raise ModelFileError(f"{path}: {old}")
        raise ModelFileError(
            f"{path}: its metadata is not sealed the way the exporter writes it (the digest must close "
            f"it); it was edited after export; {_BYPASS}"
        )
    expected, prefix = found
    actual = seal.seal_digest(parts, prefix)
    if expected == actual:
        return
    if expected == legacy():
        raise ModelFileError(f"{path}: {old}")
    raise ModelFileError(
        f"{path}: digest mismatch (computed {actual[:19]}..., metadata {expected[:19]}...): the graph, "
        f"weights, metadata, external data or tokenizer were corrupted or changed after export; {_BYPASS}"
    )


def read_onnx(path: Path, verify_digest: bool = True, folder: Path | None = None) -> ModelFile:
    """An ONNX file's one metadata entry, checked and (``verify_digest``) unsealed; ``folder``
    holds its companion files (default: the file's own folder)."""
    data = read_bytes(path)
    try:
        layout = seal.onnx_layout(data)
    except ValueError as e:  # truncated, or not protobuf at all
        raise ModelFileError(f"{path}: not a loadable ONNX model ({one_line(e)})") from e
    if not layout.entries:
        raise ModelFileError(
            f"{path}: no '{contract.METADATA_KEY}' metadata; was it exported by sttabt-edge?"
        )
    if len(layout.entries) > 1:
        raise ModelFileError(
            f"{path}: {len(layout.entries)} '{contract.METADATA_KEY}' metadata entries; exactly one is allowed"
        )
    entry = layout.entries[0]
    if entry.fields != 2:
        raise ModelFileError(f"{path}: its '{contract.METADATA_KEY}' metadata entry is malformed")
    text = _decode(memoryview(data)[entry.value[0] : entry.value[1]], path)
    meta = _parse(text, path)
    _check_external(layout.external, folder or path.parent, path)
    if verify_digest:
        model = ("onnx", seal.onnx_model_sha256(data, layout))
        parts = _companions(model, folder or path.parent, layout.external, meta, path)
        _check_seal(text, meta, parts, lambda: seal.legacy_onnx_digest(data), path)
    return ModelFile(meta, layout.position_table)


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_tflite(path: Path, verify_digest: bool = True) -> ModelFile:
    """A .tflite file's metadata, from its sidecar ``<file>.json``, checked and (``verify_digest``)
    unsealed together with the model file."""
    side = sidecar_path(path)
    if not side.is_file():
        raise ModelFileError(f"{path}: metadata sidecar {side.name} is missing")
    try:
        with open(side, "rb") as f:
            raw = f.read(contract.MAX_METADATA_BYTES + 1)
    except OSError as e:
        raise ModelFileError(f"{side}: cannot read the metadata sidecar ({one_line(e)})") from e
    text = _decode(raw, side)
    meta = _parse(text, side)
    if verify_digest:
        try:
            model_hash = seal.file_sha256(path)
        except OSError as e:
            raise ModelFileError(f"{path}: cannot read it ({one_line(e)})") from e
        parts = _companions(("tflite", model_hash), path.parent, (), meta, path)
        _check_seal(text, meta, parts, lambda: contract.DIGEST_PREFIX + model_hash, path)
    return ModelFile(meta)


def graph_problems(
    meta: Mapping[str, Any], shapes: Mapping[str, tuple[Any, ...]], position_table: int | None
) -> list[str]:
    """Where the metadata contradicts the graph's own input shapes (static dims only)."""
    pre = meta["preprocess"]
    problems = []
    if "image" in pre:
        size, shape = pre["image"]["image_size"], shapes.get("pixel_values", ())
        fixed = [
            (d, w) for d, w in zip(shape[1:], (3, size, size), strict=False) if isinstance(d, int) and d > 0
        ]
        if len(shape) != 4 or any(d != w for d, w in fixed):
            problems.append(
                f"preprocess.image.image_size {size} does not fit the graph's pixel_values {shape}"
            )
        return problems
    max_length, shape = pre["text"]["max_length"], shapes.get("input_ids", ())
    static = shape[1] if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0 else None
    if static is not None and max_length > static:
        problems.append(f"preprocess.text.max_length {max_length} exceeds the graph's {static} tokens")
    if position_table is not None and max_length > position_table:
        problems.append(
            f"preprocess.text.max_length {max_length} exceeds the graph's {position_table} position embeddings"
        )
    return problems


def companion_files(path: Path) -> list[tuple[str, Path]]:
    """The files beside an exported model that the runtime reads with it, as (what, path): the TFLite
    sidecar, the tokenizer and external-data files its metadata and graph name (plain names only).
    Best effort and unchecked (``load`` checks them): for callers that must never write onto one of
    them (``bench m.tflite --json m.tflite.json`` replaced the sidecar). Never raises."""
    found: list[tuple[str, str]] = []
    try:
        if path.suffix.lower() == ".tflite":
            side = sidecar_path(path)
            found.append(("sidecar", side.name))
            with open(side, "rb") as f:
                raw: bytes = f.read(contract.MAX_METADATA_BYTES + 1)
        else:
            data = path.read_bytes()
            layout = seal.onnx_layout(data)
            found += [("external data", name) for name in layout.external]
            raw = data[layout.entries[0].value[0] : layout.entries[0].value[1]] if layout.entries else b"{}"
        meta, _ = contract.parse_metadata(_decode(raw, path))
        tokenizer = seal.tokenizer_name(meta) if isinstance(meta, Mapping) else None
        if tokenizer is not None:
            found.append(("tokenizer", tokenizer))
    except (OSError, ValueError, ModelFileError):
        pass
    return [(what, path.parent / name) for what, name in found if contract.plain_file_name(name) is None]
