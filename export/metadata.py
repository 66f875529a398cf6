"""The ``sttabt_edge`` metadata JSON of docs/onnx_contract.md: build, write, read.

The runtime is torch-free and learns everything it needs (labels, preprocessing, what the
method did) from this one JSON object, so it is built from the model and reducer that
were exported, never typed in by hand. The contract itself (keys, types, ranges, the digest)
belongs to the runtime (``sttabt_edge.runtime.contract``); what is written here is checked
against it, so the exporter cannot write a file the runtime would refuse. The metadata is
written sealed (``sttabt_edge.runtime.seal``): its digest covers the model, its companion files
and the metadata text, and every saved file is re-read by the runtime's own reader.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sttabt_edge.atomic import atomic_write_bytes
from sttabt_edge.compat import model_parts
from sttabt_edge.errors import ExportError, ModelFileError
from sttabt_edge.method.backtrack import ratio_schedule
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.spec import ReducerSpec, SttabtSpec, make_spec, spec_from_metadata
from sttabt_edge.runtime import contract, modelfile, seal
from sttabt_edge.runtime.contract import FAMILY_IO, FORMAT_VERSION, METADATA_KEY, REQUIRED_KEYS, TASKS

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEY",
    "REQUIRED_KEYS",
    "TASKS",
    "build_metadata",
    "check_metadata",
    "check_saved_digest",
    "copy_tokenizer",
    "read_metadata",
    "set_metadata",
    "write_sidecar",
]


def hf_config(model: nn.Module) -> Any:
    """A transformers model's ``config``: nn.Module types attributes as Tensor | Module, and the
    config's fields (num_labels, vocab_size, ...) have no stubs."""
    hf: Any = model
    return hf.config


def labels(model: nn.Module) -> list[str]:
    """Class names in logit order (config.id2label; its keys may be ints or strings)."""
    cfg = hf_config(model)
    id2label = {int(k): str(v) for k, v in (getattr(cfg, "id2label", None) or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(int(cfg.num_labels))]


def keep_schedule(spec: ReducerSpec, num_layers: int) -> list[float] | None:
    """Per-layer keep ratios of STTABT (top-k) and EViT top-k, else None (see docs/onnx_contract.md)."""
    schedule = spec.keep_schedule(num_layers)
    return None if schedule is None else ratio_schedule(schedule, num_layers)


def thresholds(spec: ReducerSpec) -> list[float] | None:
    """Concrete threshold logits θ_l (a token is kept when normalised importance > exp(θ_l))."""
    th = spec.thresholds if isinstance(spec, SttabtSpec) else None
    return None if th is None else list(th)


def sttabt_settings(spec: ReducerSpec) -> dict[str, Any] | None:
    """What rebuilds an STTABT reducer's back-tracking exactly (None for other methods)."""
    if not isinstance(spec, SttabtSpec):
        return None
    concrete = spec.thresholds is not None
    return {
        "nesting": spec.nesting,
        "min_keep": spec.min_keep,
        "p": spec.p,
        "head_reduce": spec.head_reduce,
        "temperature": None if not concrete or spec.temperature is None else spec.temperature,
        "concrete": spec.concrete if concrete else None,  # "ste" | "official" (threshold exports)
    }


# files from before the "sttabt" key ran the counted-in rule with no short-input floor
LEGACY_STTABT: dict[str, Any] = {"nesting": "count", "min_keep": 1, "p": 0.1, "head_reduce": "mean"}


def reducer_spec(meta: Mapping[str, Any]) -> ReducerSpec:
    """The spec an export's metadata records: its ``reducer_spec`` (``spec.to_metadata()``, every
    field, any kind: ToMe's r / keep_ratio have no per-layer keep schedule), or for files written
    before that key, the inverse of :func:`build_metadata`'s method keys."""
    if meta.get("reducer_spec") is not None:
        return spec_from_metadata(meta["reducer_spec"])
    method = meta.get("method", "dense")
    if method == "dense":
        return make_spec("dense")
    if method != "sttabt":
        return make_spec(method, keep_ratio=meta["keep_schedule"])
    st: Mapping[str, Any] = meta.get("sttabt") or LEGACY_STTABT
    common = {
        "p": st["p"],
        "head_reduce": st["head_reduce"],
        "nesting": st["nesting"],
        "min_keep": st["min_keep"],
    }
    if meta.get("thresholds") is not None:
        temperature = st.get("temperature")
        return SttabtSpec(
            thresholds=meta["thresholds"],
            concrete="official" if st.get("concrete") == "official" else "ste",
            temperature=0.5 if temperature is None else float(temperature),
            **common,
        )
    return SttabtSpec(keep_ratio=meta["keep_schedule"], **common)


def default_preprocess(model: nn.Module, family: str, stem: str) -> dict[str, Any]:
    if not FAMILY_IO[family].text:
        from sttabt_edge.data import image_preprocess_for

        return {"image": image_preprocess_for(model).to_dict()}
    max_len = int(hf_config(model).max_position_embeddings)
    return {"text": {"tokenizer_file": tokenizer_name(stem), "max_length": max_len}}


def vocab_sizes(model: nn.Module, family: str) -> dict[str, int | None]:
    """Embedding table sizes: the runtime refuses token ids and types outside them."""
    if not FAMILY_IO[family].text:
        return {"vocab_size": None, "type_vocab_size": None}
    cfg = hf_config(model)
    types = getattr(cfg, "type_vocab_size", None)
    return {"vocab_size": int(cfg.vocab_size), "type_vocab_size": None if types is None else int(types)}


def tokenizer_name(stem: str) -> str:
    return f"{stem}.tokenizer.json"


def build_metadata(
    model: nn.Module,
    reducer: Reducer,
    *,
    out_stem: str,
    opset: int,
    dynamo: bool,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The contract's JSON for ``model`` under ``reducer``; ``overrides`` (e.g. source_model) win."""
    import transformers

    parts = model_parts(model)
    spec = reducer.spec()
    approx = getattr(reducer, "approx", None)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "task": TASKS[parts.family],
        "family": parts.family,
        "method": spec.kind,
        "labels": labels(model),
        "num_layers": len(parts.layers),
        "num_prefix_tokens": parts.num_prefix_tokens,
        "keep_schedule": keep_schedule(spec, len(parts.layers)),
        "thresholds": thresholds(spec),
        "sttabt": sttabt_settings(spec),
        "reducer_spec": spec.to_metadata(),
        "approx_factor": None if approx is None else int(approx.factor),
        "approx_heads": None if approx is None else int(approx.heads),
        "preprocess": default_preprocess(model, parts.family, out_stem),
        **vocab_sizes(model, parts.family),
        "source_model": str(getattr(model.config, "_name_or_path", "") or ""),
        "exporter": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "opset": opset,
            "dynamo": dynamo,
        },
    }
    meta.update(overrides or {})
    check_metadata(meta)
    return meta


def check_metadata(meta: Mapping[str, Any]) -> None:
    """The runtime's contract check, as an ExportError: nothing is written that a device would refuse."""
    try:
        text = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ExportError(f"metadata is not JSON-serialisable: {e}") from e
    problems = contract.metadata_problems(json.loads(text))
    if len(text.encode()) > contract.MAX_METADATA_BYTES:
        problems.append(
            f"{len(text.encode())} bytes of JSON, over the {contract.MAX_METADATA_BYTES}-byte limit"
        )
    if problems:
        raise ExportError(
            f"metadata breaks the contract (docs/onnx_contract.md): {contract.summarize(problems)}"
        )


def _external_outside_initializers(proto: Any) -> list[str]:
    """External-data tensors the runtime's seal would not see (it reads the top-level initializers)."""
    from onnx import AttributeProto, TensorProto

    def graphs(g: Any) -> Any:
        yield g
        for node in g.node:
            for a in node.attribute:
                for sub in [a.g] if a.type == AttributeProto.GRAPH else a.graphs:
                    yield from graphs(sub)

    def tensors(g: Any, top: bool) -> Any:
        if not top:
            yield from g.initializer
        for node in g.node:
            for a in node.attribute:
                yield from [a.t] if a.type == AttributeProto.TENSOR else a.tensors

    found = []
    for i, g in enumerate(graphs(proto.graph)):
        found += [t.name for t in tensors(g, i == 0) if t.data_location == TensorProto.EXTERNAL]
    return found


def set_metadata(proto: Any, meta: Mapping[str, Any], folder: str | Path | None = None) -> dict[str, Any]:
    """Write (or replace) ``metadata_props["sttabt_edge"]`` of an onnx.ModelProto, sealed.

    The seal covers every byte the proto serializes to but this entry, the external-data files
    and the tokenizer the file names (read from ``folder``, where the saved file will sit with
    them), and the metadata text; so it must be the last change before the proto is saved.
    Returns the metadata as written."""
    keep = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    check_metadata({**meta, contract.DIGEST_KEY: contract.DIGEST_PREFIX + "0" * 64})
    if hidden := _external_outside_initializers(proto):
        raise ExportError(
            f"external data outside the graph's top-level initializers cannot be sealed: {hidden}"
        )
    data = proto.SerializeToString()
    layout = seal.onnx_layout(data)
    tokenizer = seal.tokenizer_name(meta)
    if folder is None and (layout.external or tokenizer is not None):
        raise ExportError(
            "set_metadata needs folder= (where the external data and tokenizer sit) to seal them"
        )
    try:
        parts = seal.components(
            ("onnx", seal.onnx_model_sha256(data, layout)), Path(folder or "."), layout.external, tokenizer
        )
    except OSError as e:
        raise ExportError(f"cannot seal the metadata: {e}") from e
    text = seal.sealed_text(meta, parts)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, text
    return json.loads(text)


def write_sidecar(side: Path, meta: Mapping[str, Any], model: bytes) -> dict[str, Any]:
    """Write a TFLite sidecar ``<file>.tflite.json`` sealed with ``model`` (the .tflite bytes) and the
    tokenizer its metadata names, read from the sidecar's folder. Returns the metadata as written."""
    check_metadata({**meta, contract.DIGEST_KEY: contract.DIGEST_PREFIX + "0" * 64})
    try:
        parts = seal.components(
            ("tflite", hashlib.sha256(model).hexdigest()), side.parent, (), seal.tokenizer_name(meta)
        )
    except OSError as e:
        raise ExportError(f"cannot seal {side.name}: {e}") from e
    text = seal.sealed_text(meta, parts, indent=2)
    atomic_write_bytes(side, text.encode("utf-8"))
    return json.loads(text)


def check_saved_digest(path: str | Path, folder: str | Path | None = None) -> None:
    """The saved file passes the runtime's own metadata and seal checks (what ``load`` does), with
    its companion files in ``folder`` (default: beside it)."""
    try:
        modelfile.read_onnx(Path(path), True, None if folder is None else Path(folder))
    except ModelFileError as e:
        raise ExportError(f"the saved file fails the runtime's checks: {e}") from e


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an exported file; corrupt files and foreign models raise ExportError."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise ExportError(f"ONNX file not found: {p}")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # google.protobuf DecodeError and friends
        raise ExportError(f"cannot read {p} as an ONNX model (truncated or corrupt file?): {e}") from e
    props = {m.key: m.value for m in proto.metadata_props}
    if METADATA_KEY not in props:
        raise ExportError(f"{p} has no '{METADATA_KEY}' metadata: not exported by sttabt-edge")
    try:
        return json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise ExportError(f"{p}: '{METADATA_KEY}' metadata is not valid JSON: {e}") from e


def copy_tokenizer(tokenizer_file: str | Path | None, model: nn.Module, out_path: Path) -> Path:
    """Copy tokenizer.json to ``<stem>.tokenizer.json`` beside the graph (text models need it)."""
    src = Path(tokenizer_file) if tokenizer_file is not None else None
    if src is None:
        guess = Path(str(getattr(model.config, "_name_or_path", "") or "")) / "tokenizer.json"
        src = guess if guess.is_file() else None
    if src is not None and src.is_dir():
        src = src / "tokenizer.json"
    if src is None or not src.is_file():
        raise ExportError(
            f"text export needs the model's tokenizer.json (got {tokenizer_file!r}); pass tokenizer_file= "
            "or export from a model directory that holds tokenizer.json"
        )
    dst = out_path.with_name(tokenizer_name(out_path.stem))
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
    return dst
