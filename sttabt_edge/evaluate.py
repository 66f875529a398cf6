"""Evaluate a classifier under a token reducer: task metric, retention, occupancy, analytic FLOPs.

Retention and occupancy are defined in :mod:`sttabt_edge.method.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from sttabt_edge.data import Example, batches
from sttabt_edge.method.flops import dense_flops, output_flops
from sttabt_edge.method.metrics import occupancy
from sttabt_edge.runtime import ImagePreprocess, TextPreprocess
from sttabt_edge.sparse_model import SparseClassifier


@dataclass
class EvalResult:
    method: str
    metrics: dict[str, float]
    retention: float  # mean over samples of the mean over layers (real tokens only)
    retention_per_layer: list[float]
    occupancy: float  # the paper's metric: L+1 entries over occupancy_length (None: real length)
    occupancy_length: int | None
    gflops: float  # per sample, model + reducer cost
    flops_ratio: float  # vs the dense model on the same inputs
    num_samples: int
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def task_metrics(preds: np.ndarray, labels: np.ndarray, task: str | None = None) -> dict[str, float]:
    """Accuracy, plus MCC (CoLA), F1 (MRPC) or Pearson/Spearman (STS-B, regression)."""
    if task == "STS-B":
        p, y = preds.astype(np.float64), labels.astype(np.float64)
        rank = lambda a: np.argsort(np.argsort(a)).astype(np.float64)  # noqa: E731 (no ties in practice)
        return {
            "pearson": float(np.corrcoef(p, y)[0, 1]),
            "spearman": float(np.corrcoef(rank(p), rank(y))[0, 1]),
        }
    out = {"accuracy": float((preds == labels).mean())}
    tp = float(((preds == 1) & (labels == 1)).sum())
    fp = float(((preds == 1) & (labels == 0)).sum())
    fn = float(((preds == 0) & (labels == 1)).sum())
    tn = float(((preds == 0) & (labels == 0)).sum())
    if task == "MRPC":
        out["f1"] = 2 * tp / max(2 * tp + fp + fn, 1.0)
    if task == "CoLA":
        denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        out["mcc"] = float((tp * tn - fp * fn) / denom) if denom > 0 else 0.0
    return out


@torch.no_grad()
def evaluate(
    sc: SparseClassifier,
    examples: Sequence[Example],
    image: ImagePreprocess | None = None,
    text: TextPreprocess | None = None,
    batch_size: int = 32,
    task: str | None = None,
    name: str | None = None,
    max_length: int | None = None,
    progress: bool = True,
    occupancy_length: int | None = None,
) -> EvalResult:
    """Run ``sc`` over ``examples`` (``mode="remove"``, its default: real token removal).

    ``occupancy_length``: the padded length T of the paper's occupancy (e.g. the longest
    example, as the official GLUE evaluation pads); None divides by each real length.
    """
    from rich.console import Console
    from rich.progress import Progress

    if not examples:
        raise ValueError("no examples to evaluate")
    sc.eval()
    parts, reducer = sc.parts, sc.reducer
    preds, labels, ret, occ, flops, dense = [], [], [], [], [], []
    with Progress(
        disable=not progress, transient=True, console=Console(stderr=True)
    ) as bar:  # stdout: results
        job = bar.add_task(f"eval {name or reducer.name}", total=len(examples))
        for np_inputs, y in batches(examples, batch_size, image, text, max_length):
            inputs = {k: torch.from_numpy(v) for k, v in np_inputs.items()}
            out = sc(**inputs)
            logits = out.logits.float()
            preds.append(logits.squeeze(-1).numpy() if task == "STS-B" else logits.argmax(-1).numpy())
            labels.append(y)
            ret.append(out.retention.numpy())
            n_real = out.pad_mask.sum(1)
            occ.append(occupancy(out.n_in, parts.num_prefix_tokens, n_real, occupancy_length).numpy())
            flops.append(output_flops(parts, out, reducer, inputs).numpy())
            dense.append(dense_flops(parts, out.pad_mask.sum(1)).numpy())
            bar.advance(job, len(y))
    retention = np.concatenate(ret)  # (S, L)
    f, d = np.concatenate(flops), np.concatenate(dense)
    return EvalResult(
        method=name or reducer.name,
        metrics=task_metrics(np.concatenate(preds), np.concatenate(labels), task),
        retention=float(retention.mean(1).mean()),
        retention_per_layer=[float(v) for v in retention.mean(0)],
        occupancy=float(np.concatenate(occ).mean()),
        occupancy_length=occupancy_length,
        gflops=float(f.mean() / 1e9),
        flops_ratio=float(f.mean() / d.mean()),
        num_samples=len(f),
    )
