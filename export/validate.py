"""One validation for every export kind: ONNX, fused, INT8 and TFLite files are checked the same way.

In the manner of Optimum's ``validate_model_outputs``: the exported file and a reference (the eager
library, or the unfused / fp32 file) run on the same inputs, and one comparer measures what matters
for a pruned classifier: the largest logit gap, top-1 agreement, and whether as many tokens entered
every layer (``kept_counts``). One splitter gives a fixed-batch graph exactly its batch size, and
one report type carries the result. Callers choose what must hold: the logits within ``atol``
(None: reported only, as for INT8) and the kept counts equal (``require_kept``).

The report's JSON keeps the keys each file already has (:meth:`ParityReport.to_dict`): export
summaries (``SUMMARY_FIELDS``), TFLite sidecars (``SIDECAR_FIELDS``), fusion reports
(``FUSION_FIELDS``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sttabt_edge.errors import ExportError
from sttabt_edge.export import ort as ort_utils

# logits (B, K) and kept_counts (B, L); None: a graph without the optional kept_counts output
Outputs = tuple[np.ndarray, "np.ndarray | None"]
Run = Callable[[Mapping[str, Any]], Outputs]
Inputs = Mapping[str, Any] | Sequence[Mapping[str, Any]]  # one batch or several (text: any lengths)

SUMMARY_FIELDS = ("max_abs_diff", "kept_counts_equal", "top1_agreement", "num_samples", "kept_counts")
SIDECAR_FIELDS = (
    "max_abs_diff",
    "mean_abs_diff",
    "top1_agreement",
    "kept_counts_equal",
    "kept_counts_mean",
    "num_samples",
)
FUSION_FIELDS = ("max_abs_diff", "kept_counts_equal", "num_samples")


@dataclass(frozen=True)
class ParityReport:
    """An exported file against its reference on one input set (what :func:`compare_outputs` measured)."""

    max_abs_diff: float  # largest |logit difference| (inf when the logits' shapes differ)
    kept_counts_equal: bool  # the same kept counts for every sample (True when the reference has none)
    top1_agreement: float  # fraction of samples with the same argmax (0 when a gap is not finite)
    num_samples: int
    kept_counts: list[list[int]]  # the file's per-sample kept counts ([] for a graph without them)
    mean_abs_diff: float = math.nan

    @property
    def kept_counts_mean(self) -> list[float]:
        """Per-layer mean of the file's kept counts over the samples."""
        return [float(v) for v in np.asarray(self.kept_counts).mean(axis=0)]

    def to_dict(self, fields: Iterable[str] = SUMMARY_FIELDS) -> dict[str, Any]:
        """The JSON form: ``fields`` in order (export summaries by default)."""
        return {f: getattr(self, f) for f in fields}


def compare_outputs(got: Outputs, ref: Outputs) -> ParityReport:
    """The comparer: ``got`` (the file) against ``ref``, sample for sample."""
    (logits, kept), (r_logits, r_kept) = got, ref
    if logits.shape == r_logits.shape:
        diff = np.abs(logits - r_logits)
        finite = bool(np.isfinite(diff).all())
        max_diff, mean_diff = float(diff.max()), float(diff.mean())
    else:
        finite, max_diff, mean_diff = False, math.inf, math.inf
    equal = r_kept is None or (
        kept is not None and kept.shape == r_kept.shape and bool(np.array_equal(kept, r_kept))
    )
    return ParityReport(
        max_abs_diff=max_diff,
        kept_counts_equal=equal,
        top1_agreement=float((logits.argmax(-1) == r_logits.argmax(-1)).mean()) if finite else 0.0,
        num_samples=int(r_logits.shape[0]),
        kept_counts=[] if kept is None else kept.tolist(),
        mean_abs_diff=mean_diff,
    )


def judge(
    got: Outputs,
    ref: Outputs,
    *,
    atol: float | None,
    what: str,
    against: str,
    path: str | Path,
    require_kept: bool = True,
) -> ParityReport:
    """:func:`compare_outputs`, then ExportError unless the logits are within ``atol`` (None: not
    checked) and, with ``require_kept``, the kept counts equal. ``what``/``against`` name the two
    sides in the message ("ONNX" vs "PyTorch", "fused" vs the unfused file)."""
    report = compare_outputs(got, ref)
    if atol is not None and not report.max_abs_diff <= atol:
        raise ExportError(
            f"{path}: {what} logits differ from {against} by {report.max_abs_diff:.3g} > atol {atol:g}"
        )
    if require_kept and not report.kept_counts_equal:
        raise ExportError(f"{path}: {what} kept token counts differ from {against}{_first_gap(got, ref)}")
    return report


def _first_gap(got: Outputs, ref: Outputs) -> str:
    kept, r_kept = got[1], ref[1]
    if kept is None or r_kept is None or kept.shape != r_kept.shape:
        shapes = [None if k is None else k.shape for k in (kept, r_kept)]
        return f" (shapes {shapes[0]} vs {shapes[1]})"
    i = int(np.flatnonzero((kept != r_kept).any(axis=tuple(range(1, kept.ndim))))[0])
    return f" (first at sample {i}: {kept[i].tolist()} vs {r_kept[i].tolist()})"


def fixed_batches(inputs: Mapping[str, Any], rows: int | None) -> list[tuple[dict[str, Any], int]]:
    """The splitter: batches of exactly ``rows`` samples (the last one cycled up to ``rows``), each with
    its real sample count, so a fixed-batch graph accepts them. ``rows=None`` (a dynamic batch): the
    inputs as one batch. Values are numpy arrays or torch tensors (both take an index array)."""
    total = len(next(iter(inputs.values())))
    if rows is None:
        return [(dict(inputs), total)]
    out = []
    for start in range(0, total, rows):
        real = min(total, start + rows) - start
        idx = np.arange(rows) % real + start
        out.append(({k: v[idx] for k, v in inputs.items()}, real))
    return out


def as_batches(inputs: Inputs | None) -> list[Mapping[str, Any]]:
    """One batch or a sequence of batches -> a list of batches (None: none)."""
    if inputs is None:
        return []
    return [inputs] if isinstance(inputs, Mapping) else list(inputs)


def run_batches(run: Run, reference: Run, inputs: Inputs, rows: int | None) -> tuple[Outputs, Outputs]:
    """Both sides on every batch, split by :func:`fixed_batches`; the rows a split cycled in are
    dropped, so each sample counts once."""
    got: list[Outputs] = []
    ref: list[Outputs] = []
    for batch in as_batches(inputs):
        for chunk, real in fixed_batches(batch, rows):
            got.append(_head(run(chunk), real))
            ref.append(_head(reference(chunk), real))
    return _concat(got), _concat(ref)


def validate_model_outputs(
    run: Run,
    reference: Run,
    inputs: Inputs,
    *,
    rows: int | None,
    atol: float | None,
    what: str,
    against: str,
    path: str | Path,
    require_kept: bool = True,
) -> ParityReport:
    """The one validation of an exported file: ``run`` (the file) and ``reference`` on ``inputs`` in
    batches of ``rows`` (None: as given), compared and judged (:func:`judge`)."""
    got, ref = run_batches(run, reference, inputs, rows)
    return judge(got, ref, atol=atol, what=what, against=against, path=path, require_kept=require_kept)


def ort_run(session: Any) -> Run:
    """An onnxruntime session as a :data:`Run`: contract inputs (torch or numpy) -> (logits, kept_counts)."""
    names = tuple(i.name for i in session.get_inputs())

    def run(inputs: Mapping[str, Any]) -> Outputs:
        outs = ort_utils.run(session, ort_utils.to_feeds(names, inputs))
        return outs[0], outs[1] if len(outs) > 1 else None

    return run


def static_batch(session: Any) -> int | None:
    """The batch size an onnxruntime session's graph is fixed to (None: dynamic)."""
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) else None


def _head(out: Outputs, n: int) -> Outputs:
    logits, kept = out
    return logits[:n], None if kept is None else kept[:n]


def _concat(outs: list[Outputs]) -> Outputs:
    kept = [k for _, k in outs]
    return (
        np.concatenate([lg for lg, _ in outs]),
        None if any(k is None for k in kept) else np.concatenate(kept),  # type: ignore[arg-type]
    )
