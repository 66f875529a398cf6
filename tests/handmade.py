"""Hand-built ONNX graphs that follow docs/onnx_contract.md (no torch): for the runtime tests.

``save_sealed`` writes a graph with complete contract metadata sealed the way the exporter seals
it (the file, the tokenizer beside it and the metadata text), so the runtime loads it like an export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from sttabt_edge.runtime import contract, seal

LABELS = ["cat", "dog", "fish", "bird"]


def image_meta(size: int = 8, **overrides: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "format_version": 1,
        "task": "image-classification",
        "family": "vit",
        "method": "sttabt",
        "labels": LABELS,
        "num_layers": 2,
        "num_prefix_tokens": 1,
        "keep_schedule": [0.5, 0.5],
        "thresholds": None,
        "approx_factor": 4,
        "approx_heads": None,
        "preprocess": {"image": {"image_size": size, "resize_size": size}},
        "source_model": "handmade",
        "exporter": {"opset": 17},
    }
    meta.update(overrides)
    return meta


def text_meta(
    tokenizer_file: str, max_length: int = 16, vocab_size: int = 10, **overrides: Any
) -> dict[str, Any]:
    meta = image_meta(
        task="text-classification",
        family="bert",
        labels=["neg", "pos"],
        vocab_size=vocab_size,
        type_vocab_size=2,
        preprocess={"text": {"tokenizer_file": tokenizer_file, "max_length": max_length}},
    )
    meta.update(overrides)
    return meta


def save_sealed(model: onnx.ModelProto, path: str | Path, meta: Any, digest: bool = True) -> Path:
    """Write ``meta`` (any JSON, even off-contract) as the metadata, sealed as the exporter seals it;
    a tokenizer it names is sealed when it already sits beside ``path`` as a plain file."""
    path = Path(path)
    del model.metadata_props[:]
    text = json.dumps(meta)
    if digest and isinstance(meta, dict):
        data = model.SerializeToString()
        tok = seal.tokenizer_name(meta)
        tok = tok if tok and contract.plain_file_name(tok) is None and (path.parent / tok).is_file() else None
        model_part = ("onnx", seal.onnx_model_sha256(data, seal.onnx_layout(data)))
        text = seal.sealed_text(meta, seal.components(model_part, path.parent, (), tok))
    helper.set_model_props(model, {contract.METADATA_KEY: text})
    onnx.save(model, str(path))
    return path


def image_graph(weights: np.ndarray, size: int = 8) -> onnx.ModelProto:
    """logits = mean over pixels of each channel @ W; kept_counts = constant 5 per layer (B, 2)."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["pixel_values"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        helper.make_node("Shape", ["pixel_values"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "two"], ["kshape"], axis=0),
        helper.make_node(
            "ConstantOfShape",
            ["kshape"],
            ["kept_counts"],
            value=helper.make_tensor("v", TensorProto.INT64, [1], [5]),
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["B", 3, size, size])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 4]),
            helper.make_tensor_value_info("kept_counts", TensorProto.INT64, ["B", 2]),
        ],
        [
            helper.make_tensor("W", TensorProto.FLOAT, [3, 4], weights.flatten().tolist()),
            helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
            helper.make_tensor("one", TensorProto.INT64, [1], [1]),
            helper.make_tensor("two", TensorProto.INT64, [1], [2]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def text_graph(vocab: int = 10, types: int = 2, kept: bool = False) -> onnx.ModelProto:
    """logits (B, 2) = sum over real tokens of E[id] + T[type]: a lookup that out-of-range ids break.
    ``kept``: also kept_counts (B, 2) = the row's real-token count at both "layers", so a test can
    see which inputs a run was given."""
    rng = np.random.default_rng(0)
    emb, typ = rng.standard_normal((vocab, 2)), rng.standard_normal((types, 2))
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["e"]),
        helper.make_node("Gather", ["T", "token_type_ids"], ["t"]),
        helper.make_node("Add", ["e", "t"], ["et"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "minus1"], ["m3"]),
        helper.make_node("Mul", ["et", "m3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "one"], ["logits"], keepdims=0),
    ]
    ints = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["B", "N"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 2])]
    if kept:
        nodes += [
            helper.make_node("ReduceSum", ["attention_mask", "one"], ["real"], keepdims=1),
            helper.make_node("Concat", ["real", "real"], ["kept_counts"], axis=1),
        ]
        outputs.append(helper.make_tensor_value_info("kept_counts", TensorProto.INT64, ["B", 2]))
    graph = helper.make_graph(
        nodes,
        "tiny_text",
        ints,
        outputs,
        [
            helper.make_tensor("E", TensorProto.FLOAT, [vocab, 2], emb.flatten().tolist()),
            helper.make_tensor("T", TensorProto.FLOAT, [types, 2], typ.flatten().tolist()),
            helper.make_tensor("minus1", TensorProto.INT64, [1], [-1]),
            helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def word_tokenizer(path: str | Path, words: int = 8) -> Path:
    """A WordLevel tokenizer ([PAD] 0, [UNK] 1, w2 ... w<words-1>) saved as JSON."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i for i in range(2, words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return Path(path)


def png_header(width: int, height: int) -> bytes:
    """A valid PNG that claims width x height RGB pixels but holds a tiny, truncated zlib stream:
    what an attacker sends (a few dozen bytes); only a bounded loader stays cheap on it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
