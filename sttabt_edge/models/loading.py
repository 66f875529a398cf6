"""Load supported HF classifiers (local directory, timm checkpoint or hub id) safely.

Every path ends in the same state: eval mode, eager attention (STTABT needs the attention
probabilities) and weights that were checked to match the model exactly. transformers 5.x
only *warns* about missing/unexpected keys, and raises a bare RuntimeError on shape
mismatches; both become a readable :class:`CheckpointMismatchError` here. The state-dict
helpers live in :mod:`sttabt_edge.models.weights` (the timm converter uses them too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import transformers
from torch import nn
from transformers import PreTrainedModel

from sttabt_edge import compat
from sttabt_edge.errors import (
    CheckpointMismatchError,
    InputError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from sttabt_edge.models.weights import (  # noqa: F401 (re-exported: the loader's public helpers)
    _WEIGHT_SUFFIXES,
    ensure_eager,
    load_state_dict_checked,
    load_weights,
    mismatch_message,
    pickle_refusal,
    read_safetensors,
)

# Hub ids: resolving them needs network access (or a populated HF cache).
MODEL_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "deit-t": "facebook/deit-tiny-patch16-224",
        "deit-s": "facebook/deit-small-patch16-224",
        "deit-b": "facebook/deit-base-patch16-224",
        "deit-t-distilled": "facebook/deit-tiny-distilled-patch16-224",
        "vit-b": "google/vit-base-patch16-224",
        "bert-base": "google-bert/bert-base-uncased",
        "bert-base-sst2": "textattack/bert-base-uncased-SST-2",
    }
)

# Pretraining checkpoints that load as a classifier with a new (random) head, for fine-tuning.
_BASE_TO_TASK: Mapping[str, str] = MappingProxyType(
    {
        "BertForMaskedLM": "BertForSequenceClassification",
        "BertForPreTraining": "BertForSequenceClassification",
    }
)
# Used only when config.json has no "architectures"; the strict key check catches a wrong guess.
_MODEL_TYPE_DEFAULT: Mapping[str, str] = MappingProxyType(
    {"bert": "BertForSequenceClassification", "vit": "ViTForImageClassification"}
)


def resolve_alias(name: str) -> str:
    """Short alias -> hub id; anything else is returned unchanged."""
    return MODEL_ALIASES.get(name, name)


def load_model(
    name_or_path: str | Path, *, num_labels: int | None = None, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """Load a supported classifier in eval mode with eager attention.

    ``name_or_path``: a ``save_pretrained`` directory, a timm ViT/DeiT checkpoint file, an
    alias from :data:`MODEL_ALIASES` or a hub id (hub needs network or the HF cache).
    ``num_labels``: replace the classification head by a new one of this size (for fine-tuning).
    ``dtype``: weights are cast to it (the shared MiniLM is stored in float16; we compute in float32).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        model = _load_local_dir(path, num_labels=num_labels, dtype=dtype)
    elif path.is_file():
        model = _load_timm_file(path, num_labels=num_labels, dtype=dtype)
    elif _looks_like_path(str(name_or_path)):
        raise ModelNotFoundError(
            f"{str(name_or_path)!r} does not exist (resolved to {path.resolve()}); pass a directory "
            f"written by save_pretrained, a timm checkpoint file, or one of the aliases {sorted(MODEL_ALIASES)}"
        )
    else:
        model = _load_from_hub(str(name_or_path), num_labels=num_labels, dtype=dtype)
    ensure_eager(model, switch=True)
    return model.eval()


def _looks_like_path(s: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else that does not exist is a bad path."""
    return (
        s.startswith(("/", "./", "../", "~", "."))
        or "\\" in s
        or s.count("/") > 1
        or s.lower().endswith(_WEIGHT_SUFFIXES)
    )


def _offline() -> bool:
    """Read the env each call: huggingface_hub freezes HF_HUB_OFFLINE at import time."""
    from huggingface_hub import is_offline_mode

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().upper() in {"1", "ON", "YES", "TRUE"} for f in flags) or is_offline_mode()


def _pick_class(architectures: list[str] | None, model_type: str | None, source: str) -> tuple[str, bool]:
    """-> (class name, whether the head is new). Raises for anything STTABT cannot run."""
    arch = (architectures[0] if architectures else None) or _MODEL_TYPE_DEFAULT.get(model_type or "")
    if arch is not None and arch in _BASE_TO_TASK:
        return _BASE_TO_TASK[arch], True
    if arch not in compat.SUPPORTED_CLASSES:
        raise UnsupportedModelError(
            f"{source}: architecture {arch or '(none in config.json)'!r} (model_type {model_type!r}) is not "
            f"supported; supported: {', '.join(compat.SUPPORTED_CLASSES)}"
            f" (and {', '.join(_BASE_TO_TASK)} loaded with a new classification head)"
        )
    return arch, False


def _load_local_dir(path: Path, *, num_labels: int | None, dtype: torch.dtype) -> PreTrainedModel:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelNotFoundError(
            f"{path} has no config.json; expected a directory written by save_pretrained"
        )
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{cfg_file} is not valid JSON: {e}") from e
    arch, new_head = _pick_class(raw.get("architectures"), raw.get("model_type"), str(path))
    cls = getattr(transformers, arch)
    try:
        config = cls.config_class.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"{cfg_file} is not a valid {cls.config_class.__name__}: {e}") from e
    return _from_pretrained(cls, str(path), config, num_labels=num_labels, new_head=new_head, dtype=dtype)


def _hub_unreachable(timeout: float = 2.0) -> bool:
    """One TCP connect to the hub's host: without network, huggingface_hub retries for ~25 s before it
    gives up, so the alias fails fast instead (a proxy in the environment: we cannot tell, try it)."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
    except OSError:
        return True
    return False


def _load_from_hub(name: str, *, num_labels: int | None, dtype: torch.dtype) -> PreTrainedModel:
    repo = resolve_alias(name)
    offline = _offline()
    unreachable = not offline and _hub_unreachable()
    try:  # unreachable: the HF cache may still hold the model
        config = transformers.AutoConfig.from_pretrained(repo, local_files_only=offline or unreachable)
    except (OSError, ValueError) as e:
        state = (
            "offline mode is on (HF_HUB_OFFLINE)"
            if offline
            else "the hub is unreachable"
            if unreachable
            else "the hub may be unreachable"
        )
        raise ModelNotFoundError(
            f"{name!r} is not a local path, and hub model {repo!r} could not be loaded ({state}: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Without network, pass a local "
            "directory (config.json + model.safetensors) or a timm checkpoint file."
        ) from e
    arch, new_head = _pick_class(getattr(config, "architectures", None), config.model_type, repo)
    cls = getattr(transformers, arch)
    return _from_pretrained(
        cls,
        repo,
        config,
        num_labels=num_labels,
        new_head=new_head,
        dtype=dtype,
        local_files_only=offline or unreachable,
    )


def _from_pretrained(
    cls: type[PreTrainedModel],
    source: str,
    config: transformers.PreTrainedConfig,
    *,
    num_labels: int | None,
    new_head: bool,
    dtype: torch.dtype,
    local_files_only: bool = False,
) -> PreTrainedModel:
    if num_labels is not None:
        if cls.__name__ == "BertModel":
            raise InputError("num_labels given, but BertModel has no classification head")
        if num_labels < 1:
            raise InputError(f"num_labels must be >= 1, got {num_labels}")
        if num_labels != config.num_labels:
            config.num_labels = num_labels
            new_head = True
    try:
        # ignore_mismatched_sizes=True: get the full loading info instead of transformers' bare
        # RuntimeError; we raise ourselves below unless the mismatch is in a head we replace.
        loaded: Any = cls.from_pretrained(  # (model, info) with output_loading_info; the stub says model
            source,
            config=config,
            dtype=dtype,
            attn_implementation="eager",
            ignore_mismatched_sizes=True,
            output_loading_info=True,
            local_files_only=local_files_only,
        )
    except RuntimeError as e:
        raise CheckpointMismatchError(f"{source}: weights do not fit {cls.__name__}: {e}") from e
    except OSError as e:
        raise ModelNotFoundError(f"{source}: no loadable weights for {cls.__name__}: {e}") from e
    model, info = loaded
    _check_loading_info(model, info, source, new_head=new_head)
    return model


def _check_loading_info(model: PreTrainedModel, info: Mapping, source: str, *, new_head: bool) -> None:
    """Strict by default. With a new head: head/pooler may be (re)initialized, pretraining heads dropped."""
    missing = set(info.get("missing_keys", ()))
    unexpected = set(info.get("unexpected_keys", ()))
    mismatched = {(k, tuple(a), tuple(b)) for k, a, b in info.get("mismatched_keys", ())}
    if new_head:
        fresh = _fresh_module_prefixes(model)
        backbone = compat.base_model_prefix(model)
        missing = {k for k in missing if not k.startswith(fresh)}
        mismatched = {m for m in mismatched if not m[0].startswith(fresh)}
        unexpected = {k for k in unexpected if backbone and k.startswith(backbone + ".")}
    errors = list(info.get("error_msgs", ()))
    if missing or unexpected or mismatched or errors:
        hint = (
            "config.json and the weights disagree (edited hidden_size / num_hidden_layers / num_labels, or "
            "weights saved from another architecture); fix config.json or re-save the model."
        )
        if errors:
            hint += "\n  loader errors: " + "; ".join(errors[:3])
        raise CheckpointMismatchError(
            mismatch_message(
                compat.class_name(model), f"weights in {source}", missing, unexpected, mismatched, hint
            )
        )


def _fresh_module_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the classification head(s) and pooler: the parts a new head may re-init."""
    parts = compat.model_parts(model)
    heads = [*parts.classifiers, *([parts.pooler] if parts.pooler is not None else [])]
    return tuple(f"{name}." for name, mod in model.named_modules() if name and any(mod is h for h in heads))


def _load_timm_file(path: Path, *, num_labels: int | None, dtype: torch.dtype) -> PreTrainedModel:
    from sttabt_edge.models.timm_convert import load_timm_checkpoint  # lazy: transformers ViT/DeiT classes

    model = load_timm_checkpoint(path)
    if num_labels is not None and num_labels != model.config.num_labels:
        raise InputError(
            f"{path.name} has a {model.config.num_labels}-class head; num_labels={num_labels} cannot be applied "
            "to a timm checkpoint (convert it, save_pretrained, then load the directory with num_labels)"
        )
    return model.to(dtype)  # type: ignore[arg-type]  # transformers' wrapped .to stub takes no dtype
