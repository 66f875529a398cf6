"""Latency breakdown of an exported STTABT pipeline: ApproxNet / masks / sparse model / whole / dense.

Each stage is exported as its own graph (same exporter, same axes as the pipeline) with
its own onnxruntime session. All graphs are timed round-robin in one process, one run at
a time (never concurrently: sessions running together slow each other down), so the
per-round ratios to dense hold on a loaded machine. Inputs of the later stages
(attention maps, keep masks) are computed with PyTorch from the same sample, and each
stage graph is checked against PyTorch before it is timed.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sttabt_edge.errors import ExportError
from sttabt_edge.export import ort as ort_utils
from sttabt_edge.export.graph import (
    ApproxStage,
    MaskStage,
    SparseStage,
    as_inputs,
    example_args,
    family_io,
    input_names,
)
from sttabt_edge.export.onnx import Batch, OnnxOptions, dynamic_axes, export_onnx, trace_to_onnx
from sttabt_edge.runtime.contract import BATCH, SEQUENCE
from sttabt_edge.sparse_model import SparseClassifier

STAGES = ("approxnet", "masks", "sparse_model")


@dataclass
class Stage:
    path: Path
    feeds: dict[str, np.ndarray]  # the sample's inputs of this stage
    refs: tuple[np.ndarray, ...]  # PyTorch outputs on them


def _axes(family: str, batch_dim: int | None, token_dims: tuple[int, ...]) -> dict[int, str]:
    """Batch axis symbolic (None: fixed); token axes symbolic where the family's length varies (text;
    ViT's N is fixed)."""
    batch = {} if batch_dim is None else {batch_dim: BATCH}
    return {**batch, **({d: SEQUENCE for d in token_dims} if family_io(family).variable_length else {})}


def _batch2(t: torch.Tensor, batch_dim: int) -> torch.Tensor:
    """The batch axis repeated to 2 for tracing (a batch-1 trace can pin it)."""
    return t.index_select(batch_dim, torch.arange(2) % t.shape[batch_dim])


def export_stages(
    sc: SparseClassifier,
    sample: Mapping[str, torch.Tensor],
    work: Path,
    opset: int = 17,
    dynamo: bool = False,
    batch: Batch = "dynamic",
) -> dict[str, Stage]:
    """Export ApproxNet, mask computation and sparse model as three graphs.

    ``batch``: "dynamic", or fixed like the pipeline it is compared with (the sample's batch).
    """
    dyn = batch == "dynamic"
    approx = ApproxStage(sc).eval()
    masks = MaskStage(sc).eval()
    sparse = SparseStage(sc).eval()
    family = sparse.parts.family
    names = input_names(family)
    args = example_args(family, sample)
    with torch.no_grad():
        maps = approx(*args)  # L x (B, H, R, N)
        pad = as_inputs(family, args).get("attention_mask")  # images: every token is real
        if pad is None:
            pad = torch.ones(maps[0].shape[0], maps[0].shape[-1], dtype=torch.long)
        keep = masks(*maps, pad)  # (L+1, B, N) bool
        logits, kept = sparse(*args, keep)
    map_names = tuple(f"attentions_{i}" for i in range(len(maps)))
    # token axes of each map: rows (dim 2) follow N except the top layer's prefix rows; keys (dim 3)
    map_axes = {
        name: _axes(family, 0 if dyn else None, (2, 3) if m.shape[-2] == m.shape[-1] else (3,))
        for name, m in zip(map_names, maps, strict=True)
    }
    model_axes = dynamic_axes(names, family, batch, ())
    specs = {  # name: (module, args, input names, batch dim of each input, output names, axes, refs)
        "approxnet": (approx, args, names, (0,) * len(names), map_names, model_axes | map_axes, maps),
        "masks": (
            masks,
            (*maps, pad),
            (*map_names, "attention_mask"),
            (0,) * len(maps) + (0,),
            ("keep",),
            {**map_axes, "attention_mask": _axes(family, 0 if dyn else None, (1,))},
            (keep,),
        ),
        "sparse_model": (
            sparse,
            (*args, keep),
            (*names, "keep"),
            (0,) * len(names) + (1,),
            ("logits", "kept_counts"),
            {**model_axes, "keep": _axes(family, 1 if dyn else None, (2,))},
            (logits, kept),
        ),
    }
    stages = {}
    for name, (module, stage_args, in_names, batch_dims, out_names, axes, refs) in specs.items():
        work.mkdir(parents=True, exist_ok=True)
        path = work / f"stage_{name}.onnx"
        trace = tuple(_batch2(a, d) if dyn else a for a, d in zip(stage_args, batch_dims, strict=True))
        trace_to_onnx(module, trace, path, in_names, out_names, axes, opset, dynamo)
        used = graph_inputs(path)  # the exporter drops inputs the graph never reads (e.g. maps a plan skips)
        feeds = {n: a.numpy() for n, a in zip(in_names, stage_args, strict=True) if n in used}
        stages[name] = Stage(path, feeds, tuple(r.numpy() for r in refs))
    return stages


def graph_inputs(path: Path) -> set[str]:
    """Names of an ONNX file's graph inputs (weights not loaded)."""
    import onnx

    return {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}


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
    sc: SparseClassifier,
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
    batch: Batch = "dynamic",
) -> dict[str, float]:
    """Median ms of each stage, their sum, the whole pipeline and (optionally) the dense graph,
    all timed round-robin in one process (:func:`interleaved_times_ms`), plus per-round ratios.

    ``sample``: one example (batch 1, text without padding), the edge use case; ``batch``: the
    pipeline's batch axis, so the stage graphs are exported (and optimised) like it.
    """
    stages = export_stages(sc, sample, work, opset, dynamo, batch)
    for stage in stages.values():
        check_stage(stage)
    feeds = ort_utils.to_feeds(tuple(stages["approxnet"].feeds), sample)
    graphs = {name: (s.path, s.feeds) for name, s in stages.items()} | {"pipeline": (pipeline, feeds)}
    if dense is not None:
        graphs["dense"] = (dense, feeds)
    times = ort_utils.interleaved_times_ms(graphs, threads, runs, warmup)
    result = {name: statistics.median(t) for name, t in times.items()}
    result["stages_sum"] = sum(result[s] for s in STAGES)
    if dense is not None:  # medians of per-round ratios: robust to load drift on a shared machine
        for name in (*STAGES, "pipeline"):
            result[f"{name}_vs_dense"] = statistics.median(
                a / b for a, b in zip(times[name], times["dense"], strict=True)
            )
    return result


def model_feeds(sc: SparseClassifier, inputs: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """ORT feeds of a classifier's exported graph: its family's input names, as numpy."""
    return ort_utils.to_feeds(input_names(sc.parts.family), inputs)


def pipeline_latency(
    sc: SparseClassifier,
    path: Path,
    sample: Mapping[str, torch.Tensor],
    calib: Mapping[str, torch.Tensor],
    options: OnnxOptions,
    tokenizer: Path | None,
    fuse: Callable[[Path], object] | None,
    *,
    runs: int,
    threads: int,
    int8: Path | None,
) -> dict[str, float]:
    """``sttabt-edge export``'s batch-1 medians; for STTABT also each stage. The dense reference is
    exported (and verified) with the pipeline's ``options`` to a temp dir, and ``fuse``d like it."""
    from sttabt_edge.reducers.dense import DenseReducer

    feeds = model_feeds(sc, sample)
    result: dict[str, float] = {}
    if sc.reducer.name == "dense":
        result["dense"] = ort_utils.median_latency_ms(path, feeds, threads, runs)
    else:
        with tempfile.TemporaryDirectory(prefix="sttabt-export-") as work:
            dense = export_onnx(
                sc.with_reducer(DenseReducer()),
                Path(work) / "dense.onnx",
                example_inputs=calib,
                tokenizer_file=tokenizer,
                **options,
            ).path
            if fuse is not None:  # the reference runs the same kernels as the pipeline
                fuse(dense)
            if sc.reducer.name == "sttabt":
                result = latency_breakdown(
                    sc,
                    path,
                    sample,
                    Path(work),
                    dense=dense,
                    opset=options["opset"],
                    dynamo=options["dynamo"],
                    batch=options["batch"],
                    threads=threads,
                    runs=runs,
                )
            else:
                result["pipeline"] = ort_utils.median_latency_ms(path, feeds, threads, runs)
                result["dense"] = ort_utils.median_latency_ms(dense, feeds, threads, runs)
                result["pipeline_vs_dense"] = result["pipeline"] / result["dense"]
    if int8 is not None:
        result["int8"] = ort_utils.median_latency_ms(int8, feeds, threads, runs)
    return result
