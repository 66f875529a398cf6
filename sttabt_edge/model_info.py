"""What `sttabt-edge info` reports, from a model's config.json alone (torch-free, no weights read).

Loading MiniLM's weights just to print six numbers took ~50 s on a busy 2-core machine; the
config holds all of them. Only a timm checkpoint file (no config beside it) needs the loader.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sttabt_edge.errors import InputError, ModelNotFoundError, UnsupportedModelError

FAMILIES = {"bert": "bert", "vit": "vit", "deit": "vit"}  # config model_type -> sttabt-edge family
TRAINED_FILE = "sttabt.json"  # a `train concrete|baseline` output dir keeps the model in model/
MODEL_DIR = "model"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def is_trained_dir(path: str | Path) -> bool:
    """A ``train concrete|baseline`` output: its model, reducer and ApproxNet, not a plain checkpoint."""
    return (Path(path) / TRAINED_FILE).is_file()


def model_files(path: str | Path) -> Path:
    """The folder holding a model's weights and tokenizer.json / synsets.json (model/ of a trained dir)."""
    return Path(path) / MODEL_DIR if is_trained_dir(path) else Path(path)


def looks_like_path(source: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a local path (the loader's rule)."""
    return (
        source.startswith(("/", "./", "../", "~", "."))
        or "\\" in source
        or source.count("/") > 1
        or source.lower().endswith(WEIGHT_SUFFIXES)
    )


def config_file(source: str | Path) -> Path | None:
    """The config.json of a local model dir (or of a trained output dir's model/); None for a file,
    an alias or a hub id. A path that does not exist raises ModelNotFoundError."""
    path = Path(source).expanduser()
    if path.is_dir():
        if is_trained_dir(path) and (path / MODEL_DIR / "config.json").is_file():
            return path / MODEL_DIR / "config.json"
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} has no config.json; expected a directory written by save_pretrained"
            )
        return path / "config.json"
    if not path.exists() and looks_like_path(str(source)):
        raise ModelNotFoundError(f"--model {source}: no such file or folder")
    return None


def read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON: {e}") from e


def describe(
    config: Mapping[str, Any], source: str = "config.json", num_prefix_tokens: int | None = None
) -> dict[str, Any]:
    """family, layers, heads, hidden, intermediate, prefix tokens (+ architecture, labels, tokens).

    ``num_prefix_tokens``: when the loaded model is at hand (its class decides; else the config's
    architecture: DeiT with a distillation token has 2)."""
    model_type = config.get("model_type")
    family = FAMILIES.get(str(model_type))
    arch = (config.get("architectures") or [None])[0]
    if family is None:
        raise UnsupportedModelError(
            f"{source}: model_type {model_type!r} (architecture {arch!r}) is not "
            f"supported; supported: {', '.join(sorted(FAMILIES))}"
        )
    prefix = num_prefix_tokens or (2 if arch == "DeiTForImageClassificationWithTeacher" else 1)
    try:
        info = {
            "family": family,
            "layers": int(config["num_hidden_layers"]),
            "heads": int(config["num_attention_heads"]),
            "hidden": int(config["hidden_size"]),
            "intermediate": int(config["intermediate_size"]),
            "num_prefix_tokens": prefix,
        }
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{source}: config lacks a usable {e} entry") from e
    info["architecture"] = arch
    info["num_labels"] = len(config.get("id2label") or {}) or None
    info["tokens"] = _tokens(config, family, prefix)
    return info


def _tokens(config: Mapping[str, Any], family: str, prefix: int) -> int | None:
    """Sequence length at the model's input size: patches + prefix tokens, or a text model's position
    limit (a variable length, in the contract's FAMILY_IO; imported here, not at the top, so the
    layers below the runtime that read this module's shape rule do not import the runtime)."""
    from sttabt_edge.runtime.contract import FAMILY_IO

    if FAMILY_IO[family].variable_length:
        return config.get("max_position_embeddings")
    size, patch = config.get("image_size"), config.get("patch_size")
    if not (isinstance(size, int) and isinstance(patch, int) and patch > 0):
        return None
    return (size // patch) ** 2 + prefix


def approx_shape_problem(
    hidden: int, teacher_heads: int, intermediate: int, factor: int, heads: int | None
) -> str | None:
    """Why an ApproxNet of widths / ``factor`` with ``heads`` heads (None: the teacher's) cannot be built for
    a model of these sizes, or None. The one rule (``method.approxnet.approx_config`` raises it; the CLI
    checks it from config.json before torch loads)."""
    if not isinstance(factor, int) or factor < 1:
        return f"factor must be a positive int, got {factor!r}"
    heads = teacher_heads if heads is None else heads
    if not isinstance(heads, int) or heads < 1 or teacher_heads % heads:
        return f"heads must divide the teacher's {teacher_heads} attention heads, got {heads!r}"
    if hidden % factor or (hidden // factor) % heads:
        return (
            f"factor {factor} does not fit hidden_size {hidden} with {heads} heads: hidden_size / factor "
            f"= {hidden / factor:g} must be an integer divisible by the head count; pick a factor dividing "
            f"{hidden // heads} (the per-head width)"
        )
    if intermediate // factor < 1:
        return f"factor {factor} leaves no FFN width (intermediate_size {intermediate})"
    return None
