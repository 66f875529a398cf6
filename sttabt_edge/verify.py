"""Accuracy-parity check of an exported model against its PyTorch reference.

Runs the same pruning configuration in PyTorch (rebuilt from the export's metadata) and
in the exported file (ONNX Runtime or LiteRT) over a dataset, and reports max/mean
absolute logit difference, top-1 agreement, kept-count agreement and each one's task
metric. ``sttabt-edge verify`` exits non-zero when a tolerance is exceeded, which is
what CI runs on every submission.

Each side preprocesses the examples its own way: the file with the preprocessing its metadata
records, PyTorch with the reference model's (:func:`reference_preprocess`), and the file's
labels must be the reference model's. Otherwise a file whose mean/std or labels were edited
would agree with itself and pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sttabt_edge.data import Example, batches
from sttabt_edge.errors import InputError
from sttabt_edge.evaluate import task_metrics
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.runtime import ImagePreprocess, TextPreprocess, load
from sttabt_edge.runtime.predictor import Predictor
from sttabt_edge.sparse_model import SparseClassifier


@dataclass
class Tolerance:
    max_abs_logit: float = 1e-3  # fp32 graphs agree to ~1e-5; quantized ones need --max-abs-logit larger
    min_top1_agreement: float = 0.999
    min_kept_agreement: float = 0.99  # fraction of samples whose per-layer kept counts match exactly

    def __post_init__(self) -> None:
        """Finite and in range: NaN compares false with everything, so a NaN bound passed any file."""
        ok = {
            "max_abs_logit": math.isfinite(self.max_abs_logit) and self.max_abs_logit >= 0,
            "min_top1_agreement": math.isfinite(self.min_top1_agreement)
            and 0 <= self.min_top1_agreement <= 1,
            "min_kept_agreement": math.isfinite(self.min_kept_agreement)
            and 0 <= self.min_kept_agreement <= 1,
        }
        bad = [f"{k} {getattr(self, k)!r}" for k, good in ok.items() if not good]
        if bad:
            raise InputError(
                f"tolerance out of range: {', '.join(bad)} (max_abs_logit: finite, >= 0; agreements: in [0, 1])"
            )


@dataclass(frozen=True)
class ReferencePreprocess:
    """How the PyTorch side turns examples into tensors: the reference model's own preprocessing."""

    image: ImagePreprocess | None = None
    text: TextPreprocess | None = None
    max_length: int | None = None


def reference_preprocess(
    model: torch.nn.Module, files: Path | None, max_length: int | None = None
) -> ReferencePreprocess:
    """The reference model's preprocessing: the eval transform for its input size (images), or the
    ``tokenizer.json`` in ``files`` (its folder) limited to its position table, cutting texts at
    ``max_length`` (the exported file's input length, so both sides see the same tokens)."""
    from sttabt_edge.data import image_preprocess_for

    config = getattr(model, "config", None)
    if hasattr(config, "image_size"):
        return ReferencePreprocess(image=image_preprocess_for(model))
    tok = files / "tokenizer.json" if files is not None else None
    if tok is None or not tok.is_file():
        raise InputError(f"the reference text model has no tokenizer.json{f' in {files}' if files else ''}")
    positions = int(getattr(config, "max_position_embeddings", 0) or 0) or None
    return ReferencePreprocess(
        text=TextPreprocess.from_file(tok, model_max_length=positions), max_length=max_length
    )


@dataclass
class VerifyReport:
    file: str
    samples: int
    max_abs_logit: float
    mean_abs_logit: float  # mean over samples of each sample's max |Δlogit|
    top1_agreement: float
    kept_agreement: float | None
    metrics_reference: dict[str, float]
    metrics_exported: dict[str, float]
    passed: bool
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reference_reducer(
    meta: dict[str, Any], model: torch.nn.Module, approx_dir: Path | None = None
) -> Reducer:
    """Rebuild the export's reducer from its metadata (see docs/onnx_contract.md): the spec it
    records (:func:`~sttabt_edge.export.metadata.reducer_spec`) and, for STTABT, its ApproxNet
    (cut to a TFLite file's static slots, ``tflite.slots``, where they cut the rule's sets)."""
    from sttabt_edge.export.metadata import reducer_spec
    from sttabt_edge.reducers.factory import build, takes_approx

    spec = reducer_spec(meta)
    if not takes_approx(spec):
        return build(spec)
    from sttabt_edge.method.approxnet import ApproxNet, build_approxnet

    info = meta.get("approx") or {}
    source = approx_dir or (Path(info["source"]) if info.get("source") else None)
    if source is not None:
        approx = ApproxNet.load(source)
    elif info.get("init"):  # an untrained ApproxNet is rebuilt deterministically from the teacher
        heads = info.get("heads")
        approx = build_approxnet(
            model,
            int(info["factor"]),
            info["init"],
            int(info.get("seed", 0)),
            None if heads is None else int(heads),
        )
    else:
        raise ValueError("the export's ApproxNet is not recorded in its metadata; pass --approx DIR")
    from sttabt_edge.export.tflite_slots import sidecar_reference

    return sidecar_reference(meta, build(spec, approx.eval()).eval())  # a .tflite's slots, if it records them


@torch.no_grad()
def verify(
    exported: Predictor | str | Path,
    sc: SparseClassifier,
    examples: Sequence[Example],
    batch_size: int = 16,
    tolerance: Tolerance | None = None,
    task: str | None = None,
    reference: ReferencePreprocess | None = None,
) -> VerifyReport:
    """Compare PyTorch (``sc``, the export's model under its reference reducer) and the exported
    file on ``examples``. ``reference``: the PyTorch side's preprocessing (:func:`reference_preprocess`);
    None: the model's own for images, the file's tokenizer for texts (the model carries none)."""
    from sttabt_edge.export.metadata import labels as model_labels

    pred = exported if isinstance(exported, Predictor) else load(exported)
    tol = tolerance or Tolerance()
    ref_model = sc.eval()
    if reference is None:
        reference = (
            reference_preprocess(ref_model.model, None)
            if pred.image is not None
            else ReferencePreprocess(text=pred.text, max_length=pred.max_length)
        )
    if (pred.image is None) != (reference.image is None):
        raise InputError(f"{pred.path.name} and the reference model are not of one kind (image / text)")
    diffs, ref_logits, exp_logits, labels, kept_eq = [], [], [], [], []
    ours = batches(examples, batch_size, pred.image, pred.text, pred.max_length)
    theirs = batches(examples, batch_size, reference.image, reference.text, reference.max_length)
    for (np_inputs, y), (ref_inputs, _) in zip(ours, theirs, strict=True):
        feed = {k: v for k, v in np_inputs.items() if k in pred.input_names}
        out = pred.run(feed)
        ref = ref_model(**{k: torch.from_numpy(v) for k, v in ref_inputs.items()})
        r, e = ref.logits.float().numpy(), np.asarray(out["logits"], dtype=np.float32)
        diffs.append(np.abs(r - e).max(axis=1))
        ref_logits.append(r)
        exp_logits.append(e)
        labels.append(y)
        if "kept_counts" in out:
            kept_eq.append((np.asarray(out["kept_counts"]) == ref.n_in.numpy()).all(axis=1))
    d = np.concatenate(diffs)
    r, e, y = np.concatenate(ref_logits), np.concatenate(exp_logits), np.concatenate(labels)
    agree = float((r.argmax(1) == e.argmax(1)).mean())
    kept = float(np.concatenate(kept_eq).mean()) if kept_eq else None
    failures = []
    expected = model_labels(ref_model.model)
    if pred.metadata.labels != expected:
        wrong = sum(a != b for a, b in zip(pred.metadata.labels, expected, strict=False))
        failures.append(
            f"labels differ from the reference model's ({len(pred.metadata.labels)} in the file, "
            f"{len(expected)} in the model, {wrong} at different positions)"
        )
    if not d.max() <= tol.max_abs_logit:  # NaN logits fail too
        failures.append(f"max abs logit diff {d.max():.2e} > {tol.max_abs_logit:.0e}")
    if agree < tol.min_top1_agreement:
        failures.append(f"top-1 agreement {agree:.4f} < {tol.min_top1_agreement}")
    if kept is not None and kept < tol.min_kept_agreement:
        failures.append(f"kept-count agreement {kept:.4f} < {tol.min_kept_agreement}")
    pick = (lambda z: z.squeeze(-1)) if task == "STS-B" else (lambda z: z.argmax(1))
    return VerifyReport(
        file=str(pred.path),
        samples=len(d),
        max_abs_logit=float(d.max()),
        mean_abs_logit=float(d.mean()),
        top1_agreement=agree,
        kept_agreement=kept,
        metrics_reference=task_metrics(pick(r), y, task),
        metrics_exported=task_metrics(pick(e), y, task),
        passed=not failures,
        failures=failures,
    )
