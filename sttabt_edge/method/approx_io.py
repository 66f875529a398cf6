"""ApproxNet persistence: ``model.safetensors`` + ``approxnet.json``, written atomically, read
with every check that turns a damaged or foreign file into one CheckpointMismatchError line.
(``ApproxNet.save`` / ``ApproxNet.load`` are these functions.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sttabt_edge import compat
from sttabt_edge.atomic import atomic_write
from sttabt_edge.errors import CheckpointMismatchError, ModelNotFoundError, UnsupportedModelError, one_line
from sttabt_edge.method.approxnet import FORMAT, META_FILE, WEIGHTS_FILE, ApproxNet, approx_config


def save_approxnet(net: ApproxNet, directory: str | os.PathLike[str]) -> Path:
    """Write ``model.safetensors`` and ``approxnet.json`` atomically into ``directory``."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    meta = {
        "format": FORMAT,
        "version": 1,
        "factor": net.factor,
        "heads": net.heads,
        "init": net.init,
        "model_class": compat.class_name(net.model),
        "teacher_hidden_size": net.teacher_hidden_size,
        "config": net.model.config.to_dict(),
    }
    tags = {"format": FORMAT, "factor": str(net.factor), "model_class": meta["model_class"]}
    atomic_write(d / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata=tags))
    text = json.dumps(meta, indent=2, sort_keys=True, default=str)
    atomic_write(d / META_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return d


def load_approxnet(
    cls: type[ApproxNet],
    directory: str | os.PathLike[str],
    teacher_config: Any = None,
    *,
    factor: int | None = None,
    device: str | torch.device = "cpu",
) -> ApproxNet:
    """Rebuild from :func:`save_approxnet` output (safetensors only); shape mismatches raise CheckpointMismatchError.

    ``teacher_config`` / ``factor``, when given, are checked against the checkpoint. A damaged
    or foreign file (invalid JSON, a pickle renamed .safetensors) is one CheckpointMismatchError line.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    d = Path(directory)
    meta_path, weights_path = d / META_FILE, d / WEIGHTS_FILE
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise ModelNotFoundError(f"{p} not found: not an ApproxNet directory (see ApproxNet.save)")
    meta = _read_description(meta_path)
    model_cls = _model_class(meta["model_class"])
    try:
        config = model_cls.config_class.from_dict(meta["config"])
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointMismatchError(f"{meta_path}: invalid model config ({one_line(e)})") from e
    config._attn_implementation = "eager"
    saved_factor = int(meta["factor"])
    if factor is not None and factor != saved_factor:
        raise CheckpointMismatchError(f"{d} holds an ApproxNet with factor {saved_factor}, expected {factor}")
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            tags = f.metadata() or {}
    except Exception as e:  # SafetensorError is a bare Exception
        raise CheckpointMismatchError(
            f"{weights_path}: not a readable safetensors file ({one_line(e)})"
        ) from e
    if tags.get("factor", str(saved_factor)) != str(saved_factor):
        raise CheckpointMismatchError(
            f"{weights_path} was saved with factor {tags['factor']} but {meta_path} says {saved_factor}"
        )
    if teacher_config is not None:
        _check_teacher(config, int(meta["teacher_hidden_size"]), teacher_config, saved_factor, d)
    with torch.random.fork_rng(devices=[]):  # the throwaway init must not move the global RNG
        net = cls(model_cls(config), saved_factor, str(meta["init"]), int(meta["teacher_hidden_size"]))
    try:
        state = load_file(str(weights_path), device=str(device))
    except Exception as e:  # a valid header over truncated tensor data
        raise CheckpointMismatchError(
            f"{weights_path}: not a readable safetensors file ({one_line(e)})"
        ) from e
    _check_state(net.state_dict(), state, weights_path)
    net.load_state_dict(state)
    return net.to(device).eval()


def _read_description(path: Path) -> dict[str, Any]:
    """approxnet.json with the keys :meth:`ApproxNet.load` reads, or one CheckpointMismatchError line."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointMismatchError(f"{path}: unreadable ApproxNet description ({one_line(e)})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointMismatchError(f"{path} is not an ApproxNet description (format={found!r})")
    ints = ("factor", "teacher_hidden_size")
    bad = [k for k in ("model_class", "init", "config", *ints) if k not in meta]
    bad += [
        k
        for k in ints
        if k in meta and (isinstance(meta[k], bool) or not isinstance(meta[k], int) or meta[k] < 1)
    ]
    if bad or not isinstance(meta["config"], dict):
        raise CheckpointMismatchError(f"{path}: missing or invalid {bad or ['config']}")
    return meta


def _model_class(name: str) -> Any:
    """The transformers class (typed Any: its config_class is HF API without stubs)."""
    if name not in compat.SUPPORTED_CLASSES:
        raise UnsupportedModelError(
            f"ApproxNet checkpoint for {name}; supported: {', '.join(compat.SUPPORTED_CLASSES)}"
        )
    import transformers

    return getattr(transformers, name)


def _check_teacher(config: Any, teacher_hidden: int, teacher_config: Any, factor: int, d: Path) -> None:
    heads = int(config.num_attention_heads)
    if int(teacher_config.num_attention_heads) % heads:
        raise CheckpointMismatchError(
            f"ApproxNet in {d} has {heads} heads, which do not group the teacher's {teacher_config.num_attention_heads}"
        )
    want = approx_config(teacher_config, factor, heads)
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_labels")
    bad = [
        f"{k}: checkpoint {getattr(config, k)} vs expected {getattr(want, k)}"
        for k in keys
        if getattr(config, k) != getattr(want, k)
    ]
    if teacher_hidden != int(teacher_config.hidden_size):
        bad.append(f"teacher hidden_size: checkpoint {teacher_hidden} vs {teacher_config.hidden_size}")
    if bad:
        raise CheckpointMismatchError(
            f"ApproxNet in {d} does not fit this teacher (factor {factor}): " + "; ".join(bad)
        )


def _check_state(want: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], path: Path) -> None:
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    shapes = [
        f"{k}: file {tuple(got[k].shape)} vs model {tuple(want[k].shape)}"
        for k in sorted(set(want) & set(got))
        if got[k].shape != want[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append(f"wrong shapes {shapes[:5]}{' ...' if len(shapes) > 5 else ''}")
        raise CheckpointMismatchError(f"{path} does not match its approxnet.json: " + "; ".join(parts))
