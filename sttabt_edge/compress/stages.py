"""The stages of ``compress``, one function each: data split, distillation, measuring a point,
threshold training, export and runtime accuracy. pipeline.py strings them together."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sttabt_edge.compress.budget import Allocation, allocate, step_seconds
from sttabt_edge.compress.config import CompressConfig
from sttabt_edge.compress.search import Point, contained_in, split_holdout
from sttabt_edge.data import Example, batches, glue_tsv, image_folder, longest_length
from sttabt_edge.evaluate import evaluate
from sttabt_edge.method.approxnet import ApproxNet, build_approxnet
from sttabt_edge.method.distill import DistillWeights
from sttabt_edge.reducers import DenseReducer, SttabtReducer
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.sparse_model import SparseClassifier
from sttabt_edge.train.approx import ApproxObjective, frozen, train_approx
from sttabt_edge.train.checkpoint import latest_checkpoint
from sttabt_edge.train.concrete import build_objective, train_concrete
from sttabt_edge.train.config import ApproxConfig, SparseTrainConfig, TrainConfig
from sttabt_edge.train.data import BatchSource, TrainData
from sttabt_edge.train.recipes import CONCRETE_SPARSE, CONCRETE_TRAIN

# per modality: the distillation recipe (SST-2: the official AdamW 1e-4, clip 0.5; images:
# benchmarks/quickstart.py's DeiT recipe), as TrainConfig options (flat names); threshold training's is train/recipes.py
APPROX_RECIPE = {
    "text": dict(lr=1e-4, grad_clip=0.5, warmup=0.05),
    "image": dict(lr=5e-4, grad_clip=1.0, warmup=0.05),
}
MIN_APPROX_STEPS = 20
MIN_CONCRETE_STEPS = 30


@dataclass
class Split:
    """The data as compress uses it: ``data.train`` fits, ``held`` selects, ``report`` is only reported."""

    data: TrainData  # .train = fit split, .eval = held-out split, .calib = sentence-like fit inputs
    held: list[Example]
    report: list[Example]  # e.g. SST-2 dev; never used for a choice
    dropped_contained: int  # fit texts dropped because they occur inside a held-out text
    occupancy_length: int | None  # text: the longest held-out example (the paper's padded length)
    mean_length: float  # mean tokens of a held-out input


def split_data(cfg: CompressConfig, data: TrainData) -> Split:
    """Held-out selection split (``--holdout`` sentence-like training examples, or ``--holdout-data``)."""
    lengths = [len(t) for t in data.tokens(cfg.batch.max_length)[0]] if data.modality == "text" else None
    min_tokens = cfg.selection.holdout_min_tokens if data.modality == "text" else 0
    report = data.eval_examples() if data.eval else []
    if cfg.selection.holdout_data is not None:
        held = _load_examples(cfg.selection.holdout_data, data.modality)
        fit = list(data.train)
    else:
        fit_idx, held_idx = split_holdout(
            len(data.train), cfg.selection.holdout, cfg.seed, lengths, min_tokens
        )
        fit, held = [data.train[i] for i in fit_idx], [data.train[i] for i in held_idx]
    dropped = 0
    if data.modality == "text" and all(isinstance(e.inputs, str) for e in fit + held):
        inside = contained_in([str(e.inputs) for e in fit], [str(e.inputs) for e in held])
        dropped = int(inside.sum())
        fit = [e for e, bad in zip(fit, inside, strict=True) if not bad]
    base = replace(data, train=fit, eval=held, calib=None, _tokens={})
    calib = None
    if lengths is not None and min_tokens:  # retention is calibrated on inputs shaped like the held-out ones
        fit_lengths = [len(t) for t in base.tokens(cfg.batch.max_length)[0]]
        calib = [e for e, n in zip(fit, fit_lengths, strict=True) if n >= min_tokens] or None
    split_data_ = replace(base, calib=calib)
    held_examples = split_data_.eval_examples()
    occ_len, mean_len = None, 0.0
    if data.text is not None:
        occ_len = longest_length(held_examples, data.text, cfg.batch.max_length)
        mean_len = float(np.mean([len(t) for t in _token_lengths(held_examples, data, cfg.batch.max_length)]))
    return Split(split_data_, held_examples, report, dropped, occ_len, mean_len)


def _token_lengths(examples: Sequence[Example], data: TrainData, max_length: int) -> list[np.ndarray]:
    return replace(data, train=list(examples), _tokens={}).tokens(max_length)[0]


def _load_examples(path: Path, modality: str) -> list[Example]:
    return image_folder(path) if modality == "image" else glue_tsv(path)


def measure(
    model: nn.Module,
    reducer: Reducer,
    split: Split,
    cfg: CompressConfig,
    kind: str,
    keep_ratio: float | None = None,
    target_retention: float | None = None,
) -> Point:
    """Accuracy, retention, occupancy and FLOPs of one operating point on the held-out split."""
    d = split.data
    r = evaluate(
        SparseClassifier(model, reducer),
        split.held,
        d.image,
        d.text,
        batch_size=64,
        task=d.task,
        name=kind,
        max_length=cfg.batch.max_length,
        occupancy_length=split.occupancy_length,
    )
    return Point(
        kind,
        keep_ratio,
        100.0 * r.metrics["accuracy"],
        r.retention,
        r.occupancy,
        r.flops_ratio,
        target_retention,
    )


def measure_dense(model: nn.Module, split: Split, cfg: CompressConfig) -> Point:
    return measure(model, DenseReducer(), split, cfg, "dense")


def calibration_batch(split: Split, cfg: CompressConfig, n: int = 256) -> dict[str, torch.Tensor]:
    (b,) = split.data.calibration_batches(n, seed=cfg.seed, max_length=cfg.batch.max_length, chunk=n)
    return {k: torch.from_numpy(v) for k, v in b.items()}


def approx_config(cfg: CompressConfig) -> ApproxConfig:
    return ApproxConfig(factor=cfg.approxnet.factor, init="interpolate", heads=cfg.approxnet.heads)


def _plan(
    split: Split,
    cfg: CompressConfig,
    recipe: dict[str, float],
    fixed: int | None,
    seconds: float,
    measure: Callable[[BatchSource], float],
    min_steps: int,
    **fields: Any,
) -> tuple[TrainConfig, Allocation]:
    """A trainer's TrainConfig: ``fixed`` steps when given, else as many as ``seconds`` allow at the
    step time ``measure`` reports on the run's own batches."""
    base = TrainConfig.of(
        steps=1,
        batch_size=cfg.batch.size,
        max_length=cfg.batch.max_length,
        eval_batch_size=64,
        seed=cfg.seed,
        **fields,
    ).with_options(recipe)
    if fixed is not None:
        return base.replace(optim=base.optim.replace(steps=fixed)), Allocation(seconds, None, fixed)
    alloc = allocate(seconds, measure(split.data.training_source(base)), min_steps)
    return base.replace(optim=base.optim.replace(steps=max(alloc.steps, 1))), alloc


def plan_distillation(
    model: nn.Module, split: Split, cfg: CompressConfig, seconds: float
) -> tuple[TrainConfig, Allocation]:
    """The distillation's TrainConfig with as many steps as ``seconds`` allow (measured step time)."""

    def measure(source: BatchSource) -> float:
        approx = build_approxnet(
            model, cfg.approxnet.factor, "interpolate", seed=cfg.seed, heads=cfg.approxnet.heads
        )
        with frozen(model):
            return step_seconds(ApproxObjective(model, approx, DistillWeights()), source)

    return _plan(
        split,
        cfg,
        APPROX_RECIPE[split.data.modality],
        cfg.budget.approx_steps,
        seconds,
        measure,
        MIN_APPROX_STEPS,
        log_every=50,
        save_every=500,
        max_eval_samples=256,
    )


def distil(
    model: nn.Module, split: Split, cfg: CompressConfig, tcfg: TrainConfig, out: Path, resume: bool
) -> ApproxNet:
    return train_approx(
        model,
        split.data,
        cfg=tcfg,
        out=out,
        acfg=approx_config(cfg),
        resume=resume and latest_checkpoint(out) is not None,
    )


def plan_concrete(
    model: nn.Module, approx: ApproxNet, split: Split, cfg: CompressConfig, seconds: float
) -> tuple[TrainConfig, Allocation]:
    """Threshold training's TrainConfig for what the budget leaves (measured step time)."""

    def measure(source: BatchSource) -> float:
        scfg = SparseTrainConfig(**CONCRETE_SPARSE[split.data.modality])
        objective = build_objective(copy.deepcopy(model), copy.deepcopy(approx), scfg)
        return step_seconds(objective, source)

    return _plan(
        split,
        cfg,
        CONCRETE_TRAIN[split.data.modality],
        cfg.budget.threshold_steps,
        seconds,
        measure,
        MIN_CONCRETE_STEPS,
        log_every=10,
        save_every=100,
    )


def train_thresholds(
    model: nn.Module,
    approx: ApproxNet,
    split: Split,
    tcfg: TrainConfig,
    target: float,
    out: Path,
    source_dir: Path | None,
    resume: bool,
) -> None:
    """Concrete masking (ours, the documented default) for ``target`` into the trained dir ``out``,
    on a fresh copy of the dense model, with the modality's measured recipe (train/recipes.py)."""
    scfg = SparseTrainConfig(target_retention=round(target, 4), **CONCRETE_SPARSE[split.data.modality])
    train_concrete(
        copy.deepcopy(model),
        copy.deepcopy(approx),
        split.data,
        cfg=tcfg,
        scfg=scfg,
        out=out,
        resume=resume and latest_checkpoint(out) is not None,
        source_dir=source_dir,
    )


def topk_reducer(approx: ApproxNet, keep_ratio: float) -> SttabtReducer:
    return SttabtReducer(approx, keep_ratio=keep_ratio).eval()


def runtime_accuracy(
    path: Path, examples: Sequence[Example], batch_size: int = 32, num_tokens: int | None = None
) -> dict[str, Any]:
    """Accuracy and real-token retention of an exported file through the torch-free runtime.

    Text counts a sample's real tokens from its attention mask; images have ``num_tokens`` tokens
    (patches + prefix; the file does not record the patch size), so pass it for their retention."""
    from sttabt_edge.runtime import load

    pred = load(path)
    hits, kept, n = 0, [], 0
    for x, y in batches(examples, batch_size, pred.image, pred.text, pred.max_length):
        out = pred.run({k: v for k, v in x.items() if k in pred.input_names})
        hits += int((np.asarray(out["logits"]).argmax(1) == y).sum())
        n += len(y)
        if "kept_counts" in out and "attention_mask" in x:  # text: real tokens entering each layer
            k = np.asarray(out["kept_counts"], dtype=np.float64)  # (B, L)
            kept.append(k / x["attention_mask"].sum(1)[:, None])
        elif "kept_counts" in out and num_tokens:  # images: every token is real
            kept.append(np.asarray(out["kept_counts"], dtype=np.float64) / num_tokens)
    res: dict[str, Any] = {"file": str(path), "examples": n, "accuracy": 100.0 * hits / max(n, 1)}
    if kept:
        res["retention"] = float(np.concatenate(kept).mean())
    return res
