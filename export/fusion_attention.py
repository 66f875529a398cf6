"""The attention pass: match each scaled-dot-product site and write it as one
``com.microsoft.MultiHeadAttention`` (see ``fusion`` for why ORT's own matchers miss our graphs).

A site is matched structurally from its ``Softmax`` outwards; anything unexpected raises
``_NoMatch`` with the reason, and the site is left unfused and reported, never guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sttabt_edge.export.fusion_graph import (
    MS_DOMAIN,
    Graph,
    attr,
    ensure_ms_opset,
    ints,
    prune,
    through_casts,
    topological_sort,
)


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


def _key(g: Graph, name: str) -> Any:
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


def _shape_entries(g: Graph, reshape: onnx.NodeProto) -> list[Entry] | None:
    """A Reshape's target shape, entry by entry: a constant shape, or a Concat of scalars."""
    value = g.const(reshape.input[1])
    if value is not None:
        return ints(value)
    concat = g.producer.get(reshape.input[1])
    if concat is None or concat.op_type != "Concat":
        return None
    entries: list[Entry] = []
    for name in concat.input:
        v = ints(g.const(name))
        if v is not None and len(v) != 1:
            return None
        entries.append(_key(g, name) if v is None else v[0])
    return entries


def _heads(g: Graph, reshape: onnx.NodeProto) -> tuple[list[Entry], int]:
    """A (B, S, C) -> (B, S, H, D) Reshape: its 4 shape entries and H (a constant)."""
    entries = _shape_entries(g, reshape)
    _need(entries is not None and len(entries) == 4, f"reshape {reshape.name}: not a 4-entry shape")
    assert entries is not None
    h = entries[2]
    _need(isinstance(h, int) and h > 0, f"reshape {reshape.name}: head count is not a constant")
    assert isinstance(h, int)
    return entries, h


def _projection(
    g: Graph, node: onnx.NodeProto | None, perm: list[int], what: str
) -> tuple[str, list[str], int]:
    """Transpose(perm) <- Reshape(x (B, S, C), (B, S, H, D)): (x, shape entries, H)."""
    _need(
        node is not None and node.op_type == "Transpose" and ints(np.array(attr(node, "perm"))) == perm,
        f"{what}: not a Transpose{perm}",
    )
    assert node is not None
    reshape = g.parent(node, 0, "Reshape")
    _need(reshape is not None, f"{what}: no Reshape before the Transpose")
    assert reshape is not None
    shape, heads = _heads(g, reshape)
    return reshape.input[0], shape, heads


def _scale_squared(g: Graph, name: str, q_heads: str) -> float | None:
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
    div = through_casts(g, sqrt.input[0], TensorProto.FLOAT)
    _need(
        div is not None and div.op_type == "Div" and ints(g.const(div.input[0])) == [1],
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
        ints(g.const(sl.input[1])) == [-1]
        and (len(sl.input) < 4 or ints(g.const(sl.input[3])) in (None, [0])),
        "scale: the Slice does not take the last dim",
    )
    _need(shape.input[0] == q_heads, "scale: computed from another tensor than the queries")
    return None


def _padding_mask(g: Graph, bias: str) -> tuple[str, float]:
    """Unsqueeze(Where(Not(valid), m, 0), [1, 2]) -> (valid, m): method.block.padding_bias.

    The two new axes may come as one Unsqueeze or as a chain (unslimmed exports)."""
    axes: list[int] = []
    node = g.producer.get(bias)
    while node is not None and node.op_type == "Unsqueeze":
        step = ints(g.const(node.input[1])) if len(node.input) > 1 else attr(node, "axes")
        _need(step is not None, "mask: Unsqueeze axes are not constant")
        assert step is not None
        axes = sorted(step) + axes if not axes else _merge_axes(step, axes)
        node = g.producer.get(node.input[0])
    _need(axes == [1, 2], f"mask: the bias is not Unsqueeze(.., [1, 2]) (axes {axes})")
    where = node
    _need(where is not None and where.op_type == "Where", "mask: no Where")
    assert where is not None
    neg = through_casts(g, where.input[0], TensorProto.BOOL)
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
        v = attr(cos, "value")
        zero = np.zeros(1, np.float32) if v is None else numpy_helper.to_array(v)
    _need(np.all(np.asarray(zero) == 0), "mask: the kept value is not 0")
    return neg.input[0], float(fill.reshape(-1)[0])


def _merge_axes(inner: list[int], outer: list[int]) -> list[int]:
    """Axes of Unsqueeze(outer) after Unsqueeze(inner), as one Unsqueeze of the inner input
    (non-negative axes only; enough for the (B, K) -> (B, 1, 1, K) padding bias)."""
    _need(all(a >= 0 for a in inner + outer), "mask: negative Unsqueeze axes")
    rank = 2 + len(inner) + len(outer)  # the bias starts 2-D
    dims: list[str | None] = [None] * 2
    for a in sorted(inner):
        dims.insert(a, "new")
    for a in sorted(outer):
        dims.insert(a, "new")
    _need(len(dims) == rank, "mask: unexpected Unsqueeze chain")
    return [i for i, d in enumerate(dims) if d == "new"]


def _match(g: Graph, softmax: onnx.NodeProto) -> _Site:
    _need(attr(softmax, "axis", -1) in (-1, 3), "softmax not over the last axis")
    pv = g.only_consumer(softmax.output[0], "MatMul")
    _need(
        pv is not None and pv.input[0] == softmax.output[0],
        "softmax output has other consumers (attention probabilities are used)",
    )
    assert pv is not None
    ctx_t = g.only_consumer(pv.output[0], "Transpose")
    _need(ctx_t is not None and ints(np.array(attr(ctx_t, "perm"))) == [0, 2, 1, 3], "context: no Transpose")
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
    g = Graph(proto)
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
        ensure_ms_opset(proto)
        # ONNX shape inference skips contrib ops: without a declared type, what follows each
        # MultiHeadAttention stays untyped and ORT's quantizer refuses it (unslimmed files have no value_info)
        typed = {v.name for v in proto.graph.value_info}
        proto.graph.value_info.extend(
            helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in sorted(replaced - typed)
        )
        prune(proto)
        topological_sort(proto)
    main_skipped = [r for r in skipped if "other consumers" not in r]
    return proto, len(sites) + len(main_skipped), len(sites), skipped
