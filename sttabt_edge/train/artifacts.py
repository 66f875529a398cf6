"""The final output of ``train concrete`` / ``train baseline``: a self-contained sparse model.

    OUT/sttabt.json      method, reducer (thresholds / keep schedule), labels, preprocessing, configs
    OUT/model/           the main model (HF save_pretrained) + tokenizer / synsets files of the source
    OUT/approxnet/       the ApproxNet (STTABT only; ApproxNet.save)

``model/`` and ``approxnet/`` are each swapped in as a whole, and ``sttabt.json`` is
written last (atomically), so it only ever describes complete files.
:func:`load_sttabt` rebuilds the SparseClassifier (model + reducer) for evaluation or export.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from sttabt_edge import compat
from sttabt_edge.errors import CheckpointMismatchError
from sttabt_edge.model_info import MODEL_DIR, TRAINED_FILE, is_trained_dir  # noqa: F401 (the layout, re-exported)
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.spec import ReducerSpec
from sttabt_edge.sparse_model import SparseClassifier
from sttabt_edge.train.checkpoint import atomic_dir, atomic_write_text
from sttabt_edge.train.hf import hf_config, hf_model

FORMAT = "sttabt-trained"
APPROX_DIR = "approxnet"
SAVABLE = ("sttabt", "ltp", "topk")  # what `train concrete|baseline` produces
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "synsets.json",
)


def reducer_meta(reducer: Reducer) -> dict[str, Any]:
    """JSON description of a trained reducer (what :func:`build_reducer` needs): its spec's
    metadata, plus where an STTABT reducer's ApproxNet lives."""
    if reducer.name not in SAVABLE:
        raise ValueError(f"cannot save a {reducer.name!r} reducer")
    meta = reducer.spec().to_metadata()
    return {**meta, "approx": APPROX_DIR} if reducer.takes_approx else meta


def reducer_spec(meta: Mapping[str, Any]) -> ReducerSpec:
    """The spec of :func:`reducer_meta`'s output, in inference form (hard thresholds). Runs saved
    before the "concrete" key are the straight-through variant (the spec's default)."""
    from sttabt_edge.reducers.spec import spec_from_metadata

    if meta.get("name") not in SAVABLE:
        raise CheckpointMismatchError(f"unknown reducer {meta.get('name')!r} in {TRAINED_FILE}")
    return spec_from_metadata(meta).for_inference()


def trained_spec(path: str | Path) -> ReducerSpec:
    """A trained dir's reducer spec, from its ``sttabt.json`` alone (nothing loaded)."""
    return reducer_spec(read_meta(path)["reducer"])


def build_reducer(meta: Mapping[str, Any], approx: nn.Module | None) -> Reducer:
    """Inverse of :func:`reducer_meta` (inference form: hard thresholds)."""
    from sttabt_edge.reducers.factory import build, takes_approx

    spec = reducer_spec(meta)
    return build(spec, approx if takes_approx(spec) else None).eval()


def save_trained(
    out: str | Path,
    model: nn.Module,
    reducer: Reducer,
    meta: Mapping[str, Any],
    source_dir: str | Path | None = None,
    approx: nn.Module | None = None,
) -> Path:
    """Write the self-contained output directory (see the module docstring)."""
    out = Path(out)
    with atomic_dir(out / MODEL_DIR) as tmp:
        hf_model(model).save_pretrained(tmp)
        for name in SIDE_FILES:
            src = Path(source_dir) / name if source_dir is not None else None
            if src is not None and src.is_file():
                shutil.copy2(src, tmp / name)
    if approx is not None:
        from sttabt_edge.method.approxnet import ApproxNet

        assert isinstance(approx, ApproxNet)  # load_trained reads the folder back with ApproxNet.load
        with atomic_dir(out / APPROX_DIR) as tmp:
            approx.save(tmp)
    cfg = hf_config(model)
    payload = {
        "format": FORMAT,
        "version": 1,
        "method": reducer.name,
        "model_class": compat.class_name(model),
        "num_layers": int(cfg.num_hidden_layers),
        "label_names": {str(k): v for k, v in cfg.id2label.items()},
        "reducer": reducer_meta(reducer),
        **meta,
    }
    atomic_write_text(out / TRAINED_FILE, json.dumps(payload, indent=2, sort_keys=True, default=str))
    return out


def read_meta(path: str | Path) -> dict[str, Any]:
    p = Path(path) / TRAINED_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: not an output of `sttabt-edge train concrete|baseline`")
    meta = json.loads(p.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise CheckpointMismatchError(f"{p} is not a trained sparse model (format={meta.get('format')!r})")
    return meta


def load_trained(path: str | Path) -> tuple[nn.Module, Reducer, dict[str, Any]]:
    """(model in eval mode, reducer in inference form, sttabt.json) of a trained output dir."""
    from sttabt_edge.method.approxnet import ApproxNet
    from sttabt_edge.models.loading import load_model

    d = Path(path)
    meta = read_meta(d)
    model = load_model(d / MODEL_DIR)
    if (
        compat.class_name(model) != meta["model_class"]
        or int(model.config.num_hidden_layers) != meta["num_layers"]
    ):
        raise CheckpointMismatchError(
            f"{d / MODEL_DIR} holds a {compat.class_name(model)} with "
            f"{model.config.num_hidden_layers} layers, "
            f"but {TRAINED_FILE} describes a {meta['model_class']} with {meta['num_layers']}"
        )
    th = meta["reducer"].get("thresholds")
    n_th = len(th) if isinstance(th, list) else meta["num_layers"]  # top-k and a scalar LTP θ: no list
    if n_th != meta["num_layers"]:
        raise CheckpointMismatchError(f"{TRAINED_FILE} has {n_th} thresholds for {meta['num_layers']} layers")
    approx = None
    if meta["reducer"]["name"] == "sttabt":  # the dir's layout: only STTABT saves an ApproxNet
        approx = ApproxNet.load(d / meta["reducer"].get("approx", APPROX_DIR), model.config)
    return model, build_reducer(meta["reducer"], approx), meta


def load_sttabt(path: str | Path) -> SparseClassifier:
    """The SparseClassifier of a ``train concrete`` (or ``train baseline``) output, ready for eval/export."""
    model, reducer, _ = load_trained(path)
    return SparseClassifier(model, reducer)
