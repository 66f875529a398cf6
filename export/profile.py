"""Latency breakdown of an exported STTABT pipeline: ApproxNet / masks / sparse model / whole / dense.

Each stage is exported as its own graph (same exporter, same dynamic axes as the
pipeline) and timed in its own onnxruntime session, one session after another (never
concurrently: sessions in one process, and their threads, slow each other down). Inputs
of the later stages (attention maps, keep masks) are computed with PyTorch from the same
sample, and each stage graph is checked against PyTorch before it is timed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sttabt_edge.errors import ExportError
from sttabt_edge.export import ort as ort_utils
from sttabt_edge.export.graph import ApproxStage, MaskStage, SparseStage, example_args, input_names
from sttabt_edge.export.onnx import dynamic_axes, trace_to_onnx
from sttabt_edge.reducers.base import Reducer

STAGES = ("approxnet", "masks", "sparse_model")


@dataclass
class Stage:
    path: Path
    feeds: dict[str, np.ndarray]  # the sample's inputs of this stage
    refs: tuple[np.ndarray, ...]  # PyTorch outputs on them


def _axes(family: str, batch_dim: int, token_dims: tuple[int, ...]) -> dict[int, str]:
    """Batch axis symbolic; token axes symbolic for text only (ViT's N is fixed by the image)."""
    return {batch_dim: "batch", **({d: "sequence" for d in token_dims} if family == "bert" else {})}


def _batch2(t: torch.Tensor, batch_dim: int) -> torch.Tensor:
    """The batch axis repeated to 2 for tracing (a batch-1 trace can pin it)."""
    return t.index_select(batch_dim, torch.arange(2) % t.shape[batch_dim])


def export_stages(
    model: nn.Module,
    reducer: Reducer,
    sample: Mapping[str, torch.Tensor],
    work: Path,
    opset: int = 17,
    dynamo: bool = False,
) -> dict[str, Stage]:
    """Export ApproxNet, mask computation and sparse model as three graphs."""
    approx, masks, sparse = (cls(model, reducer).eval() for cls in (ApproxStage, MaskStage, SparseStage))
    family = sparse.parts.family
    names = input_names(family)
    args = example_args(family, sample)
    with torch.no_grad():
        attn = approx(*args)  # (L, B, H, N, N)
        pad = args[1] if family == "bert" else torch.ones(attn.shape[1], attn.shape[-1], dtype=torch.long)
        keep = masks(attn, pad)  # (L+1, B, N) bool
        logits, kept = sparse(*args, keep)
    model_axes = dynamic_axes(names, family, "dynamic", ())
    specs = {  # name: (module, args, input names, batch dim of each input, output names, axes, refs)
        "approxnet": (approx, args, names, (0,) * len(names), ("attentions",), model_axes, (attn,)),
        "masks": (
            masks,
            (attn, pad),
            ("attentions", "attention_mask"),
            (1, 0),
            ("keep",),
            {"attentions": _axes(family, 1, (3, 4)), "attention_mask": _axes(family, 0, (1,))},
            (keep,),
        ),
        "sparse_model": (
            sparse,
            (*args, keep),
            (*names, "keep"),
            (0,) * len(names) + (1,),
            ("logits", "kept_counts"),
            {**model_axes, "keep": _axes(family, 1, (2,))},
            (logits, kept),
        ),
    }
    stages = {}
    for name, (module, stage_args, in_names, batch_dims, out_names, axes, refs) in specs.items():
        path = work / f"stage_{name}.onnx"
        trace = tuple(_batch2(a, d) for a, d in zip(stage_args, batch_dims, strict=True))
        trace_to_onnx(module, trace, path, in_names, out_names, axes, opset, dynamo)
        feeds = {n: a.numpy() for n, a in zip(in_names, stage_args, strict=True)}
        stages[name] = Stage(path, feeds, tuple(r.numpy() for r in refs))
    return stages


def check_stage(stage: Stage, atol: float = 1e-4) -> None:
    """ORT outputs of a stage graph equal PyTorch's (exactly for masks and counts)."""
    got = ort_utils.run(ort_utils.open_session(stage.path), stage.feeds)
    for g, r in zip(got, stage.refs, strict=True):
        same = np.array_equal(g, r) if r.dtype.kind in "bi" else float(np.abs(g - r).max()) <= atol
        if not same:
            raise ExportError(
                f"stage graph {stage.path.name} does not match PyTorch; its timing would be meaningless"
            )


def latency_breakdown(
    model: nn.Module,
    reducer: Reducer,
    pipeline: Path,
    sample: Mapping[str, torch.Tensor],
    work: Path,
    *,
    dense: Path | None = None,
    threads: int = 2,
    runs: int = 20,
    warmup: int = 3,
    opset: int = 17,
    dynamo: bool = False,
) -> dict[str, float]:
    """Median ms of each stage, their sum, the whole pipeline and (optionally) the dense graph.

    ``sample``: one example (batch 1, text without padding), the edge use case.
    """
    stages = export_stages(model, reducer, sample, work, opset, dynamo)
    for stage in stages.values():
        check_stage(stage)
    feeds = ort_utils.to_feeds(tuple(stages["approxnet"].feeds), sample)
    result = {
        name: ort_utils.median_latency_ms(s.path, s.feeds, threads, runs, warmup)
        for name, s in stages.items()
    }
    result["stages_sum"] = sum(result[s] for s in STAGES)
    result["pipeline"] = ort_utils.median_latency_ms(pipeline, feeds, threads, runs, warmup)
    if dense is not None:
        result["dense"] = ort_utils.median_latency_ms(dense, feeds, threads, runs, warmup)
        result["pipeline_vs_dense"] = result["pipeline"] / result["dense"]
    return result
