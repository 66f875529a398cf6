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

import collections
import json
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sttabt_edge.errors import ExportError
from sttabt_edge.export.metadata import check_saved_digest, set_metadata
from sttabt_edge.runtime.contract import METADATA_KEY

MS_DOMAIN = "com.microsoft"


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

    @property
    def nodes_before(self) -> int:
        return sum(self.ops_before.values())

    @property
    def nodes_after(self) -> int:
        return sum(self.ops_after.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "nodes_before": self.nodes_before, "nodes_after": self.nodes_after}


def op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type (contrib ops by their bare name), most frequent first."""
    c = collections.Counter(n.op_type for n in proto.graph.node)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


# ---- a small read-only view of the graph --------------------------------------------------------


class _Graph:
    def __init__(self, proto: onnx.ModelProto):
        self.proto = proto
        g = proto.graph
        self.inits = {t.name: t for t in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
        for n in g.node:
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.outputs = {o.name for o in g.output}

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output, else None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        n = self.producer.get(name)
        if n is not None and n.op_type == "Identity":  # unslimmed exports wrap some weights
            return self.const(n.input[0])
        if n is not None and n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def parent(
        self, node: onnx.NodeProto, index: int, op_type: str | tuple[str, ...]
    ) -> onnx.NodeProto | None:
        if index >= len(node.input) or not node.input[index]:
            return None
        p = self.producer.get(node.input[index])
        types = (op_type,) if isinstance(op_type, str) else op_type
        return p if p is not None and p.op_type in types else None

    def only_consumer(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The single consumer of ``name`` when it has one, of ``op_type``, and is no graph output."""
        cons = self.consumers.get(name, [])
        if len(cons) != 1 or name in self.outputs or cons[0].op_type != op_type:
            return None
        return cons[0]


def _through_casts(g: _Graph, name: str, to: int) -> onnx.NodeProto | None:
    """The producer of ``name``, looking through Casts to ``to`` (no-ops unslimmed exports keep)."""
    node = g.producer.get(name)
    while node is not None and node.op_type == "Cast" and _attr(node, "to") == to:
        node = g.producer.get(node.input[0])
    return node


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _ints(value: np.ndarray | None) -> list[int] | None:
    return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


# ---- attention ----------------------------------------------------------------------------------


@dataclass
class _Site:
    softmax: onnx.NodeProto
    query: str  # (B, Sq, C) projected queries, bias added
    key: str  # (B, Sk, C)
    value: str  # (B, Sk, C)
    output: str  # (B, Sq, C), the context before the output projection
    num_heads: int
    scale: float | None  # None: the kernel's default 1/sqrt(head_size)
    valid: str | None  # (B, Sk) bool mask of real keys, or None (no padding bias)
    mask_value: float | None


class _NoMatch(Exception):
    pass


def _need(cond: Any, why: str) -> None:
    if not cond:
        raise _NoMatch(why)


Entry = Any  # a shape entry: its constant value (int), or a structural key of the tensor computing it
SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Cast", "Concat", "Slice"}


def _key(g: _Graph, name: str) -> Any:
    """A structural key: equal for tensors the same shape arithmetic computes from the same values
    (unslimmed exports repeat ``Unsqueeze(Gather(Shape(x), i))`` under different names)."""
    value = g.const(name)
    if value is not None:
        return ("const", tuple(np.asarray(value).reshape(-1).tolist()))
    node = g.producer.get(name)
    if node is None or node.op_type not in SHAPE_OPS:
        return name
    attrs = tuple(sorted((a.name, str(helper.get_attribute_value(a))) for a in node.attribute))
    return (node.op_type, attrs, tuple(_key(g, i) for i in node.input))


def _shape_entries(g: _Graph, reshape: onnx.NodeProto) -> list[Entry] | None:
    """A Reshape's target shape, entry by entry: a constant shape, or a Concat of scalars."""
    value = g.const(reshape.input[1])
    if value is not None:
        return _ints(value)  # type: ignore[return-value]
    concat = g.producer.get(reshape.input[1])
    if concat is None or concat.op_type != "Concat":
        return None
    entries: list[Entry] = []
    for name in concat.input:
        v = _ints(g.const(name))
        if v is not None and len(v) != 1:
            return None
        entries.append(_key(g, name) if v is None else v[0])
    return entries


def _heads(g: _Graph, reshape: onnx.NodeProto) -> tuple[list[Entry], int]:
    """A (B, S, C) -> (B, S, H, D) Reshape: its 4 shape entries and H (a constant)."""
    entries = _shape_entries(g, reshape)
    _need(entries is not None and len(entries) == 4, f"reshape {reshape.name}: not a 4-entry shape")
    assert entries is not None
    h = entries[2]
    _need(isinstance(h, int) and h > 0, f"reshape {reshape.name}: head count is not a constant")
    assert isinstance(h, int)
    return entries, h


def _projection(
    g: _Graph, node: onnx.NodeProto | None, perm: list[int], what: str
) -> tuple[str, list[str], int]:
    """Transpose(perm) <- Reshape(x (B, S, C), (B, S, H, D)): (x, shape entries, H)."""
    _need(
        node is not None and node.op_type == "Transpose" and _ints(np.array(_attr(node, "perm"))) == perm,
        f"{what}: not a Transpose{perm}",
    )
    assert node is not None
    reshape = g.parent(node, 0, "Reshape")
    _need(reshape is not None, f"{what}: no Reshape before the Transpose")
    assert reshape is not None
    shape, heads = _heads(g, reshape)
    return reshape.input[0], shape, heads


def _scale_squared(g: _Graph, name: str, q_heads: str) -> float | None:
    """The Q and Kᵀ multiplier s, as the scale s² it gives the scores; None for 1/sqrt(D).

    The exporter writes s = Sqrt(1 / Sqrt(Cast(Shape(q)[-1:]))), i.e. s² = 1/sqrt(D): the
    kernel's default. A folded constant is taken by value."""
    value = g.const(name)
    if value is not None:
        _need(value.size == 1, "scale is not a scalar")
        return float(value.reshape(-1)[0]) ** 2
    sqrt = g.producer.get(name)
    _need(sqrt is not None and sqrt.op_type == "Sqrt", "scale is neither a constant nor a Sqrt")
    assert sqrt is not None
    div = _through_casts(g, sqrt.input[0], TensorProto.FLOAT)
    _need(
        div is not None and div.op_type == "Div" and _ints(g.const(div.input[0])) == [1],
        "scale: not Sqrt(1 / ...)",
    )
    assert div is not None
    inner = g.parent(div, 1, "Sqrt")
    cast = inner and g.parent(inner, 0, "Cast")
    sl = cast and g.parent(cast, 0, "Slice")
    shape = sl and g.parent(sl, 0, "Shape")
    _need(shape is not None, "scale: not Sqrt(Cast(Slice(Shape(q))))")
    assert sl is not None and shape is not None
    _need(
        _ints(g.const(sl.input[1])) == [-1]
        and (len(sl.input) < 4 or _ints(g.const(sl.input[3])) in (None, [0])),
        "scale: the Slice does not take the last dim",
    )
    _need(shape.input[0] == q_heads, "scale: computed from another tensor than the queries")
    return None


def _padding_mask(g: _Graph, bias: str) -> tuple[str, float]:
    """Unsqueeze(Where(Not(valid), m, 0), [1, 2]) -> (valid, m): method.block.padding_bias.

    The two new axes may come as one Unsqueeze or as a chain (unslimmed exports)."""
    axes: list[int] = []
    node = g.producer.get(bias)
    while node is not None and node.op_type == "Unsqueeze":
        step = _ints(g.const(node.input[1])) if len(node.input) > 1 else _attr(node, "axes")
        _need(step is not None, "mask: Unsqueeze axes are not constant")
        assert step is not None
        axes = sorted(step) + axes if not axes else _merge_axes(step, axes)
        node = g.producer.get(node.input[0])
    _need(axes == [1, 2], f"mask: the bias is not Unsqueeze(.., [1, 2]) (axes {axes})")
    where = node
    _need(where is not None and where.op_type == "Where", "mask: no Where")
    assert where is not None
    neg = _through_casts(g, where.input[0], TensorProto.BOOL)
    _need(neg is not None and neg.op_type == "Not", "mask: the Where condition is not Not(valid)")
    assert neg is not None
    fill = g.const(where.input[1])
    _need(
        fill is not None and fill.size == 1 and float(fill.reshape(-1)[0]) <= -1e4,
        "mask: masked value is not a large negative constant",
    )
    assert fill is not None
    zero = g.const(where.input[2])
    if zero is None:
        cos = g.producer.get(where.input[2])
        _need(cos is not None and cos.op_type == "ConstantOfShape", "mask: the kept value is not 0")
        assert cos is not None
        v = _attr(cos, "value")
        zero = np.zeros(1, np.float32) if v is None else numpy_helper.to_array(v)
    _need(np.all(np.asarray(zero) == 0), "mask: the kept value is not 0")
    return neg.input[0], float(fill.reshape(-1)[0])


def _merge_axes(inner: list[int], outer: list[int]) -> list[int]:
    """Axes of Unsqueeze(outer) after Unsqueeze(inner), as one Unsqueeze of the inner input
    (non-negative axes only; enough for the (B, K) -> (B, 1, 1, K) padding bias)."""
    _need(all(a >= 0 for a in inner + outer), "mask: negative Unsqueeze axes")
    rank = 2 + len(inner) + len(outer)  # the bias starts 2-D
    dims = [None] * 2
    for a in sorted(inner):
        dims.insert(a, "new")
    for a in sorted(outer):
        dims.insert(a, "new")
    _need(len(dims) == rank, "mask: unexpected Unsqueeze chain")
    return [i for i, d in enumerate(dims) if d == "new"]


def _match(g: _Graph, softmax: onnx.NodeProto) -> _Site:
    _need(_attr(softmax, "axis", -1) in (-1, 3), "softmax not over the last axis")
    pv = g.only_consumer(softmax.output[0], "MatMul")
    _need(
        pv is not None and pv.input[0] == softmax.output[0],
        "softmax output has other consumers (attention probabilities are used)",
    )
    assert pv is not None
    ctx_t = g.only_consumer(pv.output[0], "Transpose")
    _need(
        ctx_t is not None and _ints(np.array(_attr(ctx_t, "perm"))) == [0, 2, 1, 3], "context: no Transpose"
    )
    assert ctx_t is not None
    out = g.only_consumer(ctx_t.output[0], "Reshape")
    _need(out is not None, "context: no Reshape to (B, Sq, C)")
    assert out is not None

    scores = g.producer.get(softmax.input[0])
    valid, mask_value = None, None
    if scores is not None and scores.op_type == "Add":
        qk_i = next((i for i in (0, 1) if g.parent(scores, i, "MatMul") is not None), None)
        _need(qk_i is not None, "scores: the Add has no MatMul input")
        assert qk_i is not None
        valid, mask_value = _padding_mask(g, scores.input[1 - qk_i])
        _need(g.only_consumer(scores.output[0], "Softmax") is not None, "scores are used elsewhere")
        qk = g.producer[scores.input[qk_i]]
    else:
        _need(scores is not None and scores.op_type == "MatMul", "scores: not a MatMul")
        assert scores is not None
        qk = scores
    _need(g.only_consumer(qk.output[0], "Add" if valid else "Softmax") is not None, "q·kᵀ is used elsewhere")

    q_mul, k_mul = g.parent(qk, 0, "Mul"), g.parent(qk, 1, "Mul")
    _need(q_mul is not None and k_mul is not None, "q·kᵀ: inputs are not scaled by Mul")
    assert q_mul is not None and k_mul is not None
    q_heads = q_mul.input[0]
    q, q_shape, heads = _projection(g, g.producer.get(q_heads), [0, 2, 1, 3], "query")
    k, k_shape, k_heads = _projection(g, g.producer.get(k_mul.input[0]), [0, 2, 3, 1], "key")
    v, v_shape, v_heads = _projection(g, g.parent(pv, 1, "Transpose"), [0, 2, 1, 3], "value")
    _need(heads == k_heads == v_heads, "head counts differ between q, k and v")
    s2 = _scale_squared(g, q_mul.input[1], q_heads)
    if k_mul.input[1] != q_mul.input[1]:  # unslimmed graphs compute the same factor twice
        _need(_scale_squared(g, k_mul.input[1], q_heads) == s2, "q and kᵀ scaled by different factors")

    entries = _shape_entries(g, out)
    _need(
        entries is not None and len(entries) == 3 and entries[:2] == q_shape[:2],
        "context Reshape is not (B, Sq, C) of the queries",
    )
    assert entries is not None
    last = entries[2]
    _need(isinstance(last, int) and (last == -1 or last > 0), "context Reshape: last dim is not a constant")
    _need(k_shape[:2] == v_shape[:2], "key and value have different (B, Sk)")
    return _Site(softmax, q, k, v, out.output[0], heads, s2, valid, mask_value)


def fuse_attention(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int, int, list[str]]:
    """Rewrite every matched attention site to com.microsoft.MultiHeadAttention (in place).

    Returns (proto, sites, fused, reasons for the sites left alone). Dead nodes are pruned."""
    g = _Graph(proto)
    sites, skipped = [], []
    softmaxes = [n for n in proto.graph.node if n.op_type == "Softmax"]
    for sm in softmaxes:
        try:
            sites.append(_match(g, sm))
        except _NoMatch as e:
            skipped.append(f"{sm.name}: {e}")
    casts: dict[str, str] = {}
    new_nodes = []
    for i, s in enumerate(sites):
        mask = ""
        if s.valid is not None:
            if s.valid not in casts:
                casts[s.valid] = f"{s.valid}_fusion_int32"
                new_nodes.append(
                    helper.make_node(
                        "Cast", [s.valid], [casts[s.valid]], name=f"/fusion/Cast_{i}", to=TensorProto.INT32
                    )
                )
            mask = casts[s.valid]
        attrs: dict[str, Any] = {"num_heads": s.num_heads}
        if s.scale is not None:
            attrs["scale"] = s.scale
        if s.mask_value is not None:
            attrs["mask_filter_value"] = max(s.mask_value, float(np.finfo(np.float32).min))
        inputs = [s.query, s.key, s.value] + (["", mask] if mask else [])
        base = s.softmax.name.rsplit("/", 1)[0]
        new_nodes.append(
            helper.make_node(
                "MultiHeadAttention",
                inputs,
                [s.output],
                domain=MS_DOMAIN,
                name=f"{base}/fusion/MultiHeadAttention_{i}",
                **attrs,
            )
        )
    if sites:
        replaced = {s.output for s in sites}
        keep = [n for n in proto.graph.node if not (set(n.output) & replaced)]
        del proto.graph.node[:]
        proto.graph.node.extend(keep + new_nodes)
        _ensure_ms_opset(proto)
        prune(proto)
        topological_sort(proto)
    main_skipped = [r for r in skipped if "other consumers" not in r]
    return proto, len(sites) + len(main_skipped), len(sites), skipped


def _ensure_ms_opset(proto: onnx.ModelProto) -> None:
    if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def prune(proto: onnx.ModelProto) -> None:
    """Drop nodes and initializers no graph output depends on (graph inputs always stay)."""
    g = proto.graph
    producer = {o: n for n in g.node for o in n.output}
    needed, stack, live = set(), [o.name for o in g.output], set()
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        n = producer.get(name)
        if n is not None and id(n) not in live:
            live.add(id(n))
            stack.extend(i for i in n.input if i)
            for a in n.attribute:  # subgraphs (If/Loop) read outer names
                for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    stack.extend(_outer_names(sub))
    keep = [n for n in g.node if id(n) in live]
    del g.node[:]
    g.node.extend(keep)
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    vis = [v for v in g.value_info if v.name in needed]
    del g.value_info[:]
    g.value_info.extend(vis)


def _outer_names(graph: onnx.GraphProto) -> Iterable[str]:
    for n in graph.node:
        yield from (i for i in n.input if i)


def topological_sort(proto: onnx.ModelProto) -> None:
    g = proto.graph
    available = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending = list(g.node)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ExportError(f"fusion left a graph with a cycle or a missing input near {rest[0].name}")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


# ---- residual adds ------------------------------------------------------------------------------


def residual_sums(proto: onnx.ModelProto) -> int:
    """Write each residual ``Add`` (two computed inputs) that feeds a LayerNormalization as ``Sum``.

    ONNX Runtime's session-level ``SkipLayerNormFusion`` turns ``Add -> LayerNormalization``
    into ``com.microsoft.SkipLayerNormalization``, and that CPU kernel is several times slower
    than ``Add`` + ``LayerNormalization`` (ORT 1.32: 12 sites at (1, 25, 384) 0.64 ms fused
    vs 0.13 ms unfused). A two-input ``Sum`` computes the same and matches no fusion pattern.
    Bias adds (one constant input) stay ``Add`` so MatMul+bias fusions still see them."""
    g = _Graph(proto)
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
    g = _Graph(proto)
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
) -> FusionReport:
    """Write a fused copy of the exported ``src`` at ``dst`` (may be ``src``) and report op counts.

    ``attention``: the MultiHeadAttention pass; ``residual_sum``: residual ``Add`` -> ``Sum``
    (:func:`residual_sums`); ``ort``: onnxruntime's SkipLayerNormalization / BiasGelu fusions
    (``embed_layer_norm`` also tries EmbedLayerNormalization); see the module doc. ``check_inputs``:
    feeds (one batch or a list) on which the fused file must match ``src`` within ``atol`` in
    the logits and exactly in ``kept_counts``, else ExportError and nothing is written.
    """
    from sttabt_edge.export.quantize import _carry_tokenizer

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
            (int(_attr(n, "num_heads")) for n in proto.graph.node if n.op_type == "MultiHeadAttention"), 0
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
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=f".{dst.stem}.") as work:
        tmp = Path(work) / dst.name
        set_metadata(proto, _carry_tokenizer(src, dst, meta))
        onnx.save(proto, str(tmp))
        check_saved_digest(tmp)
        if check_inputs is not None:
            check_parity(src, tmp, check_inputs, atol)
        tmp.replace(dst)
    return FusionReport(str(src), str(dst), before, op_counts(proto), sites, fused, sums, skipped, stats)


def check_parity(
    reference: str | Path,
    fused: str | Path,
    inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    atol: float = 1e-4,
) -> dict[str, Any]:
    """ORT on both files: max abs logit difference <= atol and identical kept counts, else ExportError."""
    from sttabt_edge.export import ort as ort_utils

    a, b = ort_utils.open_session(Path(reference)), ort_utils.open_session(Path(fused))
    names = tuple(i.name for i in a.get_inputs())
    diff, equal, n = 0.0, True, 0
    for batch in [inputs] if isinstance(inputs, Mapping) else list(inputs):
        feeds = ort_utils.to_feeds(names, batch)
        ref, got = ort_utils.run(a, feeds), ort_utils.run(b, feeds)
        diff = max(diff, float(np.abs(ref[0] - got[0]).max()))
        equal &= len(ref) < 2 or bool(np.array_equal(ref[1], got[1]))
        n += ref[0].shape[0]
    if not diff <= atol:
        raise ExportError(f"{fused}: fused logits differ from {reference} by {diff:.3g} > atol {atol:g}")
    if not equal:
        raise ExportError(f"{fused}: fused kept counts differ from {reference}")
    return {"max_abs_diff": diff, "kept_counts_equal": equal, "num_samples": n}
