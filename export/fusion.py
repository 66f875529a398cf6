"""Optional post-export step: put an exported graph on ONNX Runtime's faster CPU kernels.

What ORT (1.32) does to our exports by itself, and why the stock fusions miss or hurt:

* **Attention** is never fused. ORT's matchers (C++ ``AttentionFusion``, Python
  ``onnxruntime.transformers`` ``FusionAttention``) accept the SDPA form our exporter writes
  (``Mul`` by ``sqrt(1/sqrt(D))`` on Q and Kᵀ), but then need Hugging Face's mask subgraph
  (``(1 - mask) * -10000``, or ``Where(Cast(Sub(1, Expand(mask))))``) and one input shared by
  Q, K and V. Our padding bias is ``Unsqueeze(Where(Not(valid), finfo.min, 0), [1, 2])``
  (``method.block.padding_bias``), and a sparse layer's queries are a gathered subset of its
  keys, so nothing matches.
* **SkipLayerNormalization is slower.** ORT fuses ``Add -> LayerNormalization`` into
  ``com.microsoft.SkipLayerNormalization`` at session level (6 of MiniLM's 12 sites), and that
  CPU kernel is several times slower than ``Add`` + ``LayerNormalization``; the Python
  optimizer fuses all 12 (with the bias) and makes the graph slower still.

:func:`fuse_onnx` (defaults) therefore:

1. rewrites every scaled-dot-product site of the main model (``Reshape/Transpose`` of Q, K,
   V, the ``Mul`` scaling, ``MatMul``, optional padding bias, ``Softmax``, ``MatMul``,
   ``Transpose/Reshape``) to one ``com.microsoft.MultiHeadAttention`` with separate query and
   key/value inputs, so sparse layers (fewer queries than keys) fuse like dense ones; the
   padding bias becomes its ``key_padding_mask`` (``valid`` cast to int32). The ApproxNet's
   attention stays: its probabilities feed the back-tracking, which the kernel does not
   return (its ``Softmax`` has a second consumer, so the pattern does not match);
2. writes each residual ``Add`` feeding a LayerNormalization as a two-input ``Sum`` (same
   values), which no ORT fusion matches, so the fast unfused kernels run.

``ort=True`` adds onnxruntime.transformers' Python fusions (SkipLayerNormalization with bias,
BiasGelu; ``embed_layer_norm`` also EmbedLayerNormalization, which moves the embedding tables
out of ``Gather`` so ``quantize_onnx`` no longer stores them as 8-bit). Off by default: they
measured slower (benchmarks/fusion.py).

The graph's inputs, outputs and ``metadata_props`` are kept; the ``sttabt_edge`` digest is
recomputed (the graph changed), and a text model's tokenizer follows the file as in
``quantize_onnx`` (the metadata then names ``<dst stem>.tokenizer.json``). Fused files need
ONNX Runtime's CPU contrib ops (``com.microsoft`` domain), present in every ORT >= 1.17 build.
Dynamic INT8 (``quantize_onnx``) works on fused files unchanged: the projections stay
``MatMul`` nodes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from sttabt_edge.atomic import publish, staging
from sttabt_edge.errors import ExportError
from sttabt_edge.export import ort as ort_utils
from sttabt_edge.export.fusion_attention import fuse_attention
from sttabt_edge.export.fusion_graph import Graph, attr, op_counts
from sttabt_edge.export.metadata import check_saved_digest, set_metadata
from sttabt_edge.export.validate import (
    FUSION_FIELDS,
    as_batches,
    ort_run,
    static_batch,
    validate_model_outputs,
)
from sttabt_edge.runtime.contract import METADATA_KEY

__all__ = [  # fuse_attention and op_counts live in their own modules; imported from here too
    "FusionReport",
    "check_parity",
    "fuse_attention",
    "fuse_onnx",
    "op_counts",
    "ort_fusions",
    "residual_sums",
]


@dataclass
class FusionReport:
    src: str
    dst: str
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    attention_sites: int  # main-model attention sites found (Softmax -> MatMul with V)
    attention_fused: int  # of them, rewritten to MultiHeadAttention
    residual_sums: int = 0  # residual Add -> LayerNormalization written as Sum (see residual_sums)
    skipped: list[str] = field(default_factory=list)  # sites not fused, with the reason
    ort_fused: dict[str, int] = field(default_factory=dict)  # onnxruntime.transformers' own counts
    parity: dict[str, Any] | None = None  # check_parity's result vs src (when check_inputs were given)

    @property
    def nodes_before(self) -> int:
        return sum(self.ops_before.values())

    @property
    def nodes_after(self) -> int:
        return sum(self.ops_after.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "nodes_before": self.nodes_before, "nodes_after": self.nodes_after}


# ---- residual adds ------------------------------------------------------------------------------


def residual_sums(proto: onnx.ModelProto) -> int:
    """Write each residual ``Add`` (two computed inputs) that feeds a LayerNormalization as ``Sum``.

    ONNX Runtime's session-level ``SkipLayerNormFusion`` turns ``Add -> LayerNormalization``
    into ``com.microsoft.SkipLayerNormalization``, and that CPU kernel is several times slower
    than ``Add`` + ``LayerNormalization`` (ORT 1.32: 12 sites at (1, 25, 384) 0.64 ms fused
    vs 0.13 ms unfused). A two-input ``Sum`` computes the same and matches no fusion pattern.
    Bias adds (one constant input) stay ``Add`` so MatMul+bias fusions still see them."""
    g = Graph(proto)
    count = 0
    for n in proto.graph.node:
        if n.op_type != "LayerNormalization":
            continue
        add = g.producer.get(n.input[0])
        if add is None or add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
            continue
        if any(g.const(i) is not None for i in add.input):
            continue
        add.op_type = "Sum"
        count += 1
    return count


# ---- the other fusions (onnxruntime.transformers) ----------------------------------------------


def ort_fusions(
    proto: onnx.ModelProto, num_heads: int, hidden_size: int, embed_layer_norm: bool = False
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """SkipLayerNormalization (bias folded in) and BiasGelu by onnxruntime's Python fusions."""
    import logging

    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    opts = FusionOptions("bert")
    opts.enable_attention = False  # ours (fuse_attention); theirs does not match our graphs
    opts.enable_embed_layer_norm = embed_layer_norm
    opts.enable_gelu_approximation = False  # exact erf GELU stays exact
    opts.enable_qordered_matmul = False
    quiet = logging.getLogger("onnxruntime.transformers")
    level = quiet.level
    try:
        for name in (
            "onnx_model",
            "fusion_base",
            "onnx_model_bert",
            "fusion_utils",
            "fusion_skiplayernorm",
            "fusion_embedlayer",
            "onnxruntime.transformers",
        ):
            logging.getLogger(name).setLevel(logging.WARNING)
        model = optimize_model(
            proto,
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=opts,
            opt_level=0,
        )
    finally:
        quiet.setLevel(level)
    stats = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
    return model.model, stats


# ---- the file-level step -----------------------------------------------------------------------


def _hidden_size(proto: onnx.ModelProto) -> int:
    """Width of the main model's LayerNormalization scale (0 when there is none)."""
    g = Graph(proto)
    for n in proto.graph.node:
        if n.op_type == "LayerNormalization" and len(n.input) > 1:
            w = g.const(n.input[1])
            if w is not None:
                return int(w.size)
    return 0


def _signature(proto: onnx.ModelProto) -> list[bytes]:
    return [v.SerializeToString() for v in (*proto.graph.input, *proto.graph.output)]


def fuse_onnx(
    src: str | Path,
    dst: str | Path,
    *,
    attention: bool = True,
    residual_sum: bool = True,
    ort: bool = False,
    embed_layer_norm: bool = False,
    check_inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    atol: float = 1e-4,
    record: bool = False,
) -> FusionReport:
    """Write a fused copy of the exported ``src`` at ``dst`` (may be ``src``) and report op counts.

    ``attention``: the MultiHeadAttention pass; ``residual_sum``: residual ``Add`` -> ``Sum``
    (:func:`residual_sums`); ``ort``: onnxruntime's SkipLayerNormalization / BiasGelu fusions
    (``embed_layer_norm`` also tries EmbedLayerNormalization); see the module doc. ``check_inputs``:
    feeds (one batch or a list) on which the fused file must match ``src`` within ``atol`` in
    the logits and exactly in ``kept_counts``, else ExportError and nothing is written.
    ``record``: also write ``exporter.fused: true`` in the metadata, so the file says it needs
    contrib ops (the exporter's ``--fuse`` does; off, the metadata keeps all but digest and tokenizer).
    """
    from sttabt_edge.export.quantize import _carry_tokenizer, companions

    src, dst = Path(src), Path(dst)
    try:
        proto = onnx.load(str(src))
    except Exception as e:
        raise ExportError(f"cannot read {src} as an ONNX model: {e}") from e
    props = [(p.key, p.value) for p in proto.metadata_props]
    meta_text = dict(props).get(METADATA_KEY)
    if meta_text is None:
        raise ExportError(f"{src} has no '{METADATA_KEY}' metadata: not exported by sttabt-edge")
    meta = json.loads(meta_text)
    signature = _signature(proto)
    before = op_counts(proto)
    sites = fused = 0
    skipped: list[str] = []
    heads = 0
    if attention:
        proto, sites, fused, skipped = fuse_attention(proto)
        heads = next(
            (int(attr(n, "num_heads")) for n in proto.graph.node if n.op_type == "MultiHeadAttention"), 0
        )
    stats: dict[str, int] = {}
    if ort:
        # onnxruntime needs both sizes or neither (then it reads them off the graph where it can)
        proto, stats = ort_fusions(proto, heads, _hidden_size(proto) if heads else 0, embed_layer_norm)
    sums = residual_sums(proto) if residual_sum else 0
    if _signature(proto) != signature:
        raise ExportError(f"fusing {src} changed the graph's inputs or outputs")
    del proto.metadata_props[:]
    for k, v in props:
        if k != METADATA_KEY:
            proto.metadata_props.add(key=k, value=v)
    meta.pop("digest", None)
    if record:  # before set_metadata, which seals the digest
        meta["exporter"] = {**meta.get("exporter", {}), "fused": True}
    with staging(dst) as work:  # dst and its tokenizer appear only once whole, sealed and checked
        tmp = work / dst.name
        meta = _carry_tokenizer(src, tmp, meta)
        set_metadata(proto, meta, work)  # sealed with the tokenizer that will sit beside dst
        onnx.save(proto, str(tmp))
        check_saved_digest(tmp)
        parity = None if check_inputs is None else check_parity(src, tmp, check_inputs, atol)
        publish(work, dst.parent, [*companions(meta), dst.name])
    after = op_counts(proto)
    return FusionReport(str(src), str(dst), before, after, sites, fused, sums, skipped, stats, parity)


def check_parity(
    reference: str | Path,
    fused: str | Path,
    inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    atol: float = 1e-4,
) -> dict[str, Any]:
    """ORT on both files: max abs logit difference <= atol and identical kept counts, else ExportError.

    A fixed-batch graph (``--batch N``) gets the inputs in batches of exactly N rows."""
    a, b = ort_utils.open_session(Path(reference)), ort_utils.open_session(Path(fused))
    names = tuple(i.name for i in a.get_inputs())
    report = validate_model_outputs(
        ort_run(b),
        ort_run(a),
        [ort_utils.to_feeds(names, batch) for batch in as_batches(inputs)],
        rows=static_batch(a),
        atol=atol,
        what="fused",
        against=str(reference),
        path=fused,
    )
    return report.to_dict(FUSION_FIELDS)
