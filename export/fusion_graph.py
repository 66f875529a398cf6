"""A read-only view of an ONNX graph and the graph edits the fusion passes share.

Kept apart from the matchers (``fusion_attention``) so each pass reads the graph the same
way: constants through ``Identity``/``Constant`` wrappers, no-op ``Cast`` chains looked through.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sttabt_edge.errors import ExportError

MS_DOMAIN = "com.microsoft"


def op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type (contrib ops by their bare name), most frequent first."""
    c = collections.Counter(n.op_type for n in proto.graph.node)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


class Graph:
    """Producers, consumers and constants of a model, indexed once: stale after an edit, so each
    pass builds its own."""

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


def through_casts(g: Graph, name: str, to: int) -> onnx.NodeProto | None:
    """The producer of ``name``, looking through Casts to ``to`` (no-ops unslimmed exports keep)."""
    node = g.producer.get(name)
    while node is not None and node.op_type == "Cast" and attr(node, "to") == to:
        node = g.producer.get(node.input[0])
    return node


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def ints(value: np.ndarray | None) -> list[int] | None:
    return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


def ensure_ms_opset(proto: onnx.ModelProto) -> None:
    """Contrib ops need the com.microsoft opset declared, or ORT refuses the file."""
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
    """Reorder nodes so each follows its inputs' producers (fused nodes are appended at the end)."""
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
