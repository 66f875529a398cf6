"""onnxruntime helpers shared by verification, quantization and latency measurement.

Sessions are created one at a time with explicit thread counts and intra-op spinning off, with
the runtime's own session options and timing loop (:mod:`sttabt_edge.runtime.sessions`), so
export latencies and ``sttabt-edge bench`` configure and time sessions the same way.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from sttabt_edge.errors import ExportError
from sttabt_edge.runtime import sessions
from sttabt_edge.runtime.contract import CONTRACT_INPUTS


def session_options(threads: int = 1) -> ort.SessionOptions:
    """The runtime's options (:func:`sttabt_edge.runtime.sessions.session_options`), spinning off, quiet."""
    return sessions.session_options(threads, quiet=True)


def open_session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    """An ORT CPU session; a missing, truncated or corrupt file raises ExportError, not a protobuf trace."""
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"ONNX file not found: {p}")
    try:
        return ort.InferenceSession(str(p), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as e:  # InvalidProtobuf, Fail, InvalidGraph ... (pybind exception classes)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"cannot load {p} as an ONNX model (truncated or corrupt file?): {first}") from e


def to_feeds(names: Sequence[str], inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Torch tensors or arrays -> the graph's numpy feeds, each in its contract dtype (runtime
    ``FAMILY_IO``; a name outside the contract, such as a profiled stage's input, is float32).

    An input with a contract ``fill`` (text: mask = ones, token types = zeros, as in the library)
    may be left out: it is filled in the shape of its family's first input.
    """
    arrays = {
        k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in inputs.items()
    }
    feeds: dict[str, np.ndarray] = {}
    for name in names:
        family, tensor = CONTRACT_INPUTS.get(name, (None, None))
        if name in arrays:
            a = arrays[name]
        elif family is not None and tensor is not None and tensor.fill is not None:
            a = np.full_like(arrays[family.inputs[0].name], tensor.fill)
        else:
            raise ExportError(f"input {name!r} missing; the graph needs {list(names)}")
        dtype = np.int64 if tensor is not None and tensor.dtype == "int64" else np.float32
        feeds[name] = np.ascontiguousarray(a.astype(dtype, copy=False))
    return feeds


def run(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """session.run with a clear error when the inputs do not fit the graph (e.g. a static batch)."""
    try:
        return session.run(None, dict(feeds))
    except Exception as e:
        shapes = {k: tuple(v.shape) for k, v in feeds.items()}
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"onnxruntime could not run the graph on inputs {shapes}: {first}") from e


def median_latency_ms(
    path: str | Path, feeds: Mapping[str, np.ndarray], threads: int = 2, runs: int = 20, warmup: int = 3
) -> float:
    """Median wall time of one run in its own session; the session is dropped before returning."""
    return statistics.median(interleaved_times_ms({"graph": (path, feeds)}, threads, runs, warmup)["graph"])


def interleaved_times_ms(
    graphs: Mapping[str, tuple[str | Path, Mapping[str, np.ndarray]]],
    threads: int = 2,
    runs: int = 20,
    warmup: int = 3,
) -> dict[str, list[float]]:
    """Per-run wall times of several graphs, timed round-robin (A B C A B C ...) in one process.

    One session runs at a time and idle sessions' threads sleep (spinning is off), so they do
    not contend; load changes on a shared machine hit every graph of a round alike, which keeps
    per-round ratios stable where back-to-back medians drift.
    """
    opened = {name: (open_session(path, threads), feeds) for name, (path, feeds) in graphs.items()}
    calls = {name: _runner(session, feeds) for name, (session, feeds) in opened.items()}
    return sessions.interleaved_times_ms(calls, runs, warmup)


def _runner(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> Any:
    return lambda: run(session, feeds)


def optimized_node_counts(path: str | Path) -> dict[str, int]:
    """Nodes per op type after ONNX Runtime's full graph optimisation (what a CPU session runs).

    Small graphs pay a fixed dispatch cost per node, so this count explains much of the gap
    between FLOPs and latency ratios. "total" holds the sum.
    """
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        so = session_options(1)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        nodes = onnx.load(so.optimized_model_filepath, load_external_data=False).graph.node
    return {"total": len(nodes), **dict(Counter(node.op_type for node in nodes).most_common())}


def softmax_widths(path: str | Path, feeds: Mapping[str, np.ndarray]) -> list[int]:
    """Key-axis length of every Softmax in the graph, in graph order, measured by running it.

    The proof that tokens are really removed: in the sparse model the attention
    matrices shrink layer by layer (ApproxNet's, first in the graph, stay N wide).
    """
    import onnx

    model = onnx.load(str(path))
    names = [n.output[0] for n in model.graph.node if n.op_type == "Softmax"]
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known)
    session = ort.InferenceSession(
        model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"]
    )
    outs = dict(zip([o.name for o in session.get_outputs()], session.run(None, dict(feeds)), strict=True))
    return [int(outs[n].shape[-1]) for n in names]
