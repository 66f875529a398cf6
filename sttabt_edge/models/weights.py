"""State dicts and the eager-attention check: what the model loader and the timm converter share.

Below both (``loading`` loads timm files through ``timm_convert``, which needs these), so the
two no longer import each other. Safe by default: pickles load with ``weights_only=True``,
damaged files are one line, key and shape mismatches a short report.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from sttabt_edge import compat
from sttabt_edge.errors import CheckpointMismatchError, InputError, ModelNotFoundError, one_line

_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_CONTAINER_KEYS = ("model", "state_dict", "model_state_dict")
_SHOW = 10


def ensure_eager(model: nn.Module, *, switch: bool = False) -> nn.Module:
    """Check (or, with ``switch=True``, set) eager attention: sdpa/flash return no attention probabilities."""
    impl = compat.attn_implementation(model)
    if impl == "eager":
        return model
    if not switch:
        raise ValueError(
            f"{compat.class_name(model)} uses attn_implementation={impl!r}, but STTABT needs 'eager' "
            "(it reads attention probabilities); load with attn_implementation='eager' or call "
            "ensure_eager(model, switch=True)"
        )
    compat.set_eager_attention(model)
    if compat.attn_implementation(model) != "eager":
        raise RuntimeError(f"could not switch {compat.class_name(model)} to eager attention")
    return model


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a torch pickle (``weights_only=True``: no arbitrary code runs).

    Unwraps ``{"model": sd}`` / ``{"state_dict": sd}`` containers and a DDP ``module.`` prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"weights file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        obj: object = read_safetensors(path)
    elif suffix in _WEIGHT_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for pickled non-tensor objects, etc.
            raise InputError(
                f"{path.name}: {pickle_refusal(e)}; re-save only the state dict "
                "(torch.save(model.state_dict(), ...) or safetensors)"
            ) from e
    else:
        raise InputError(
            f"unknown weights format {path.name!r}; expected one of {', '.join(_WEIGHT_SUFFIXES)}"
        )
    return _as_state_dict(obj, path.name)


def read_safetensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """safetensors.torch.load_file, with a damaged or foreign file as one InputError line."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except Exception as e:  # SafetensorError (header too large, invalid JSON...) is a bare Exception
        raise InputError(f"{path}: not a readable safetensors file ({one_line(e)})") from e


def pickle_refusal(error: BaseException) -> str:
    """torch.load(weights_only=True)'s paragraph as one line, naming what the pickle tried to load."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    if found:
        return (
            f"holds pickled code or objects (it tries to load {found.group(1)}), which "
            "torch.load(weights_only=True) refuses to run"
        )
    return (
        f"torch.load(weights_only=True) cannot read it ({type(error).__name__}: {one_line(error, limit=160)})"
    )


def _as_state_dict(obj: object, what: str) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise InputError(f"{what} holds a {type(obj).__name__}, not a state dict")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(f"{what}: entries that are not tensors: {_preview(bad)}")
    sd = {str(k): v for k, v in obj.items()}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_state_dict_checked(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, what: str = "checkpoint"
) -> None:
    """Strict ``load_state_dict`` with a short, readable report instead of torch's wall of text."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        (k, tuple(state_dict[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(
            mismatch_message(compat.class_name(model), what, missing, unexpected, mismatched)
        )
    model.load_state_dict(dict(state_dict), strict=True)


def mismatch_message(
    class_name: str,
    what: str,
    missing: Iterable[str],
    unexpected: Iterable[str],
    mismatched: Iterable[tuple[str, tuple[int, ...], tuple[int, ...]]],
    hint: str = "",
) -> str:
    """One readable summary: counts, then the first few keys of each kind."""
    missing, unexpected = sorted(missing), sorted(unexpected)
    mismatched = sorted((k, tuple(a), tuple(b)) for k, a, b in mismatched)
    lines = [
        f"{what} does not match {class_name}: {len(missing)} missing, {len(unexpected)} unexpected, "
        f"{len(mismatched)} shape mismatches"
    ]
    if missing:
        lines.append(f"  missing from {what}: {_preview(missing)}")
    if unexpected:
        lines.append(f"  unexpected in {what}: {_preview(unexpected)}")
    if mismatched:
        shown = [f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched[:_SHOW]]
        more = f"\n    ... and {len(mismatched) - _SHOW} more" if len(mismatched) > _SHOW else ""
        lines.append("  shape mismatches:\n    " + "\n    ".join(shown) + more)
    if hint:
        lines.append(hint)
    return "\n".join(lines)


def _preview(keys: list[str]) -> str:
    more = f", ... and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more
