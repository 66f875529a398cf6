"""XNNPACK coverage of a .tflite, and the rewrite that widens it.

LiteRT's CPU path hands every op its XNNPACK delegate supports to XNNPACK and runs the rest on
its built-in kernels; each run of supported ops between two that are not becomes one delegate
partition. :func:`xnnpack_coverage` lists what stays outside (op and output type) and counts
the partitions, from the interpreter's own node list: a delegate node replaces the ops between
its inputs and its outputs, so walking back from its outputs to its inputs finds them.

:func:`delegable_matmuls`: litert-torch writes a one-head attention product ``Q·Kᵀ`` (the
ApproxNet's, one head by default) as a FULLY_CONNECTED whose weight ``K`` is computed in the
graph, and XNNPACK delegates FULLY_CONNECTED only with static weights: 11 of the ApproxNet's
12 layers fell back, each splitting its delegate partition. The same product as
BATCH_MATMUL(Q, K, adj_y=True) is delegated (same values, checked by the export's verification).

What stays outside after it (DeiT-Tiny STTABT, docs/export.md): the token selection, which is
integer and boolean work XNNPACK has no kernels for (TOPK_V2, STABLEHLO_SCATTER, GATHER_ND,
comparisons, SELECT, CAST, int32 arithmetic), and the per-layer padding bias of the slots
(GREATER, SELECT_V2), which the partitioner runs ahead of the main model's single partition.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["delegable_matmuls", "xnnpack_coverage"]


def delegable_matmuls(flatbuffer: bytes) -> tuple[bytes, int]:
    """(the model with every FULLY_CONNECTED on a computed weight as BATCH_MATMUL, how many).

    Only FCs without bias and without fused activation are rewritten (an FC with either stays);
    the weight (out, in) becomes the right operand with ``adj_y``, so ``x·Wᵀ`` is unchanged.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fb

    op_kind = schema.BuiltinOperator
    model = fb.convert_bytearray_to_object(bytearray(flatbuffer))
    codes = model.operatorCodes
    kinds = [fb.get_builtin_code_from_operator_code(c) for c in codes]
    rewritten = 0
    bmm: int | None = kinds.index(op_kind.BATCH_MATMUL) if op_kind.BATCH_MATMUL in kinds else None
    for graph in model.subgraphs:
        computed = {t for op in graph.operators for t in op.outputs}  # tensors some op writes
        for op in graph.operators:
            if kinds[op.opcodeIndex] != op_kind.FULLY_CONNECTED or op.inputs[1] not in computed:
                continue
            options = op.builtinOptions
            if (len(op.inputs) > 2 and op.inputs[2] >= 0) or options.fusedActivationFunction != 0:
                continue
            if not options.keepNumDims and len(graph.tensors[op.inputs[0]].shape) != 2:
                continue  # an FC that flattens its input: not a batched product of the same shape
            if bmm is None:
                code = schema.OperatorCodeT()
                code.builtinCode = code.deprecatedBuiltinCode = op_kind.BATCH_MATMUL
                code.version = 1
                codes.append(code)
                kinds.append(op_kind.BATCH_MATMUL)
                bmm = len(codes) - 1
            matmul = schema.BatchMatMulOptionsT()
            matmul.adjX, matmul.adjY, matmul.asymmetricQuantizeInputs = False, True, False
            op.opcodeIndex, op.inputs = bmm, list(op.inputs[:2])
            op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.BatchMatMulOptions, matmul
            rewritten += 1
    if not rewritten:
        return flatbuffer, 0
    return bytes(fb.convert_object_to_bytearray(model)), rewritten


def xnnpack_coverage(path: str | Path, threads: int = 2) -> dict[str, Any]:
    """Ops, delegated ops, XNNPACK partitions and the ops left to LiteRT's kernels ("OP:dtype": count).

    Reads the interpreter's node list (``_get_ops_details``, the only view the Python API gives
    of the delegated plan), after the default XNNPACK delegate was applied.
    """
    from ai_edge_litert.interpreter import Interpreter

    from sttabt_edge.export.tflite_graph import quiet_litert

    with quiet_litert():
        it = Interpreter(model_path=str(path), num_threads=threads)
        it.allocate_tensors()
    nodes = it._get_ops_details()
    dtypes = {t["index"]: t["dtype"].__name__ for t in it.get_tensor_details()}
    ops = [n for n in nodes if n["op_name"] != "DELEGATE"]
    partitions = [n for n in nodes if n["op_name"] == "DELEGATE"]
    producer = {int(t): n for n in ops for t in n["outputs"]}
    delegated: set[int] = set()
    for part in partitions:
        inputs = {int(t) for t in part["inputs"]}
        stack, seen = [int(t) for t in part["outputs"]], set()
        while stack:
            t = stack.pop()
            if t in seen or t in inputs or t not in producer:
                continue
            seen.add(t)
            node = producer[t]
            if node["index"] not in delegated:
                delegated.add(node["index"])
                stack.extend(int(i) for i in node["inputs"] if i >= 0)
    fallback = Counter(
        f"{n['op_name']}:{dtypes[int(n['outputs'][0])]}" for n in ops if n["index"] not in delegated
    )
    return {
        "ops": len(ops),
        "delegated": len(delegated),
        "partitions": len(partitions),
        "fallback": dict(sorted(fallback.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
