"""Convert timm ViT/DeiT checkpoints to HF transformers 5.x models, without importing timm.

timm is not installable on every edge/CI machine, and its checkpoints are plain state dicts,
so a key-renaming table is enough. All knowledge of timm *and* HF key names lives in this
module. Supported: class-token ViT/DeiT (``vit_*``, ``deit_*``) and distilled DeiT
(``dist_token`` + ``head_dist``). Anything else (avg-pool ``fc_norm``, LayerScale, register
tokens, ...) is refused with a :class:`CheckpointMismatchError` instead of loading silently wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import (
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    PreTrainedModel,
    ViTConfig,
    ViTForImageClassification,
)

from sttabt_edge.errors import CheckpointMismatchError
from sttabt_edge.models.weights import ensure_eager, load_state_dict_checked, load_weights, mismatch_message

# (name prefixes, heads, width): heads are not recoverable from tensor shapes.
_KNOWN_HEADS: tuple[tuple[tuple[str, ...], int, int], ...] = (
    (("deit_tiny", "vit_tiny"), 3, 192),
    (("deit_small", "vit_small"), 6, 384),
    (("deit_base", "vit_base"), 12, 768),
    (("vit_large",), 16, 1024),
)
# timm's own checkpoint filter drops the unused pre-logits representation layer; so do we.
_IGNORED_PREFIXES = ("pre_logits.",)
# Features HF ViT/DeiT cannot express: say why instead of only listing keys.
_UNSUPPORTED_HINTS = (
    ("fc_norm.", "fc_norm = global average pooling; HF ViT/DeiT classify from the class token"),
    ("norm_pre.", "norm_pre = LayerNorm before the blocks (CLIP-style), not in HF ViT"),
    ("reg_token", "register tokens are not supported by HF ViT/DeiT"),
    (".ls1.", "LayerScale (DeiT III) is not in HF ViT"),
    (".q_norm.", "qk-norm is not in HF ViT"),
)
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


def timm_vit_config(
    state_dict: Mapping[str, torch.Tensor],
    *,
    num_heads: int | None = None,
    image_size: int | None = None,
    name: str | None = None,
) -> ViTConfig | DeiTConfig:
    """Infer the HF config from tensor shapes (DeiTConfig when distilled, else ViTConfig).

    ``num_heads`` wins; else a known timm ``name`` (``deit_tiny_patch16_224`` ...); else hidden // 64,
    which is right for all standard ViT/DeiT sizes.
    """
    for key in ("patch_embed.proj.weight", "pos_embed", "cls_token"):
        if key not in state_dict:
            raise CheckpointMismatchError(
                f"not a class-token timm ViT/DeiT state dict: {key!r} is missing "
                f"(first keys: {', '.join(list(state_dict)[:8])})"
            )
    proj = state_dict["patch_embed.proj.weight"]
    if proj.dim() != 4 or proj.shape[2] != proj.shape[3]:
        raise CheckpointMismatchError(
            f"patch_embed.proj.weight must be a square conv kernel, got {list(proj.shape)}"
        )
    hidden, channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    depth = _depth(state_dict)
    distilled = "dist_token" in state_dict
    prefix = 2 if distilled else 1
    size = _image_size(int(state_dict["pos_embed"].shape[1]), prefix, patch, image_size)
    heads = _num_heads(hidden, num_heads, name)
    head = state_dict.get("head.weight")
    fields: dict[str, Any] = dict(
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=int(state_dict["blocks.0.mlp.fc1.weight"].shape[0]),
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-6,  # timm default; HF's default 1e-12 would shift every output slightly
        image_size=size,
        patch_size=patch,
        num_channels=channels,
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
        encoder_stride=patch,
        num_labels=0 if head is None else int(head.shape[0]),
    )
    if distilled:
        return DeiTConfig(architectures=["DeiTForImageClassificationWithTeacher"], **fields)
    return ViTConfig(architectures=["ViTForImageClassification"], **fields)


def _depth(state_dict: Mapping[str, torch.Tensor]) -> int:
    ids = {int(m.group(1)) for k in state_dict if (m := _BLOCK_RE.match(k))}
    if not ids:
        raise CheckpointMismatchError("timm state dict has no `blocks.{i}.*` keys")
    if ids != set(range(len(ids))):
        raise CheckpointMismatchError(f"timm blocks are not numbered 0..n-1: {sorted(ids)}")
    if "blocks.0.mlp.fc1.weight" not in state_dict:
        raise CheckpointMismatchError("timm state dict has no `blocks.0.mlp.fc1.weight`")
    return len(ids)


def _image_size(positions: int, prefix: int, patch: int, image_size: int | None) -> int:
    grid_tokens = positions - prefix
    side = math.isqrt(max(grid_tokens, 0))
    if side * side != grid_tokens:
        extra = ""
        if math.isqrt(positions) ** 2 == positions:
            extra = " (pos_embed excludes the prefix tokens: timm no_embed_class, e.g. DeiT III, unsupported)"
        raise CheckpointMismatchError(
            f"pos_embed has {positions} positions; minus {prefix} prefix token(s) that is not a square grid{extra}"
        )
    if image_size is None:
        return side * patch
    if image_size % patch or (image_size // patch) ** 2 != grid_tokens:
        raise CheckpointMismatchError(
            f"image_size={image_size} with patch {patch} gives {(image_size // patch) ** 2} patches, "
            f"but pos_embed has {grid_tokens} (image size {side * patch}); position interpolation is not supported"
        )
    return image_size


def _num_heads(hidden: int, num_heads: int | None, name: str | None) -> int:
    heads, why = num_heads, "num_heads"
    if heads is None and name:
        norm = name.lower().replace("-", "_").removeprefix("timm/")
        for prefixes, known, width in _KNOWN_HEADS:
            if norm.startswith(prefixes):
                if hidden != width:
                    raise CheckpointMismatchError(
                        f"name {name!r} suggests width {width}, but the checkpoint is {hidden} wide; pass num_heads"
                    )
                heads, why = known, f"name {name!r}"
                break
    if heads is None:
        heads, why = max(hidden // 64, 1), "hidden // 64"
    if heads < 1 or hidden % heads:
        raise CheckpointMismatchError(f"hidden size {hidden} is not divisible by {heads} heads (from {why})")
    return heads


def _rename_table(config: ViTConfig | DeiTConfig) -> dict[str, str]:
    """timm key -> HF key for every tensor copied unchanged (everything except the fused qkv)."""
    distilled = isinstance(config, DeiTConfig)
    bb = "deit" if distilled else "vit"
    table = {
        "cls_token": f"{bb}.embeddings.cls_token",
        "pos_embed": f"{bb}.embeddings.position_embeddings",
        "patch_embed.proj.weight": f"{bb}.embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": f"{bb}.embeddings.patch_embeddings.projection.bias",
        "norm.weight": f"{bb}.layernorm.weight",
        "norm.bias": f"{bb}.layernorm.bias",
    }
    if distilled:
        table["dist_token"] = f"{bb}.embeddings.distillation_token"
    pairs = (
        ("norm1", "layernorm_before"),
        ("norm2", "layernorm_after"),
        ("attn.proj", "attention.o_proj"),
        ("mlp.fc1", "mlp.fc1"),
        ("mlp.fc2", "mlp.fc2"),
    )
    for i in range(config.num_hidden_layers):
        for src, dst in pairs:
            for p in ("weight", "bias"):
                table[f"blocks.{i}.{src}.{p}"] = f"{bb}.layers.{i}.{dst}.{p}"
    if (config.num_labels or 0) > 0:
        heads = {"head": "cls_classifier", "head_dist": "distillation_classifier"} if distilled else {}
        for src, dst in (heads or {"head": "classifier"}).items():
            for p in ("weight", "bias"):
                table[f"{src}.{p}"] = f"{dst}.{p}"
    return table


def _qkv_keys(config: ViTConfig | DeiTConfig) -> list[tuple[str, list[str]]]:
    """Fused timm qkv key -> HF q/k/v keys (timm stacks q, k, v along dim 0 in that order)."""
    bb = "deit" if isinstance(config, DeiTConfig) else "vit"
    params = ("weight", "bias") if config.qkv_bias else ("weight",)
    return [
        (f"blocks.{i}.attn.qkv.{p}", [f"{bb}.layers.{i}.attention.{x}_proj.{p}" for x in "qkv"])
        for i in range(config.num_hidden_layers)
        for p in params
    ]


def convert_timm_vit_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: ViTConfig | DeiTConfig
) -> dict[str, torch.Tensor]:
    """Rename timm keys to the HF 5.x layout and split fused qkv; refuse leftovers and gaps."""
    table = _rename_table(config)
    qkv = _qkv_keys(config)
    expected = set(table) | {k for k, _ in qkv}
    missing = sorted(expected - set(state_dict))
    leftover = sorted(k for k in state_dict if k not in expected and not k.startswith(_IGNORED_PREFIXES))
    if missing or leftover:
        hints = sorted({h for k in leftover for s, h in _UNSUPPORTED_HINTS if s in f".{k}"})
        raise CheckpointMismatchError(
            mismatch_message(_class_name(config), "timm checkpoint", missing, leftover, [], "\n".join(hints))
        )
    out = {dst: state_dict[src] for src, dst in table.items()}
    for src, dsts in qkv:
        fused = state_dict[src]
        if fused.shape[0] != 3 * config.hidden_size:
            raise CheckpointMismatchError(
                f"{src} has shape {list(fused.shape)}; expected first dim 3 * hidden = {3 * config.hidden_size}"
            )
        out.update(zip(dsts, (t.contiguous() for t in fused.chunk(3, dim=0)), strict=True))
    return out


def _class_name(config: ViTConfig | DeiTConfig) -> str:
    return (
        "DeiTForImageClassificationWithTeacher"
        if isinstance(config, DeiTConfig)
        else "ViTForImageClassification"
    )


def build_timm_model(
    state_dict: Mapping[str, torch.Tensor], *, num_heads: int | None = None, name: str | None = None
) -> PreTrainedModel:
    """timm state dict -> HF model (eager attention, eval mode, weights checked strictly)."""
    config = timm_vit_config(state_dict, num_heads=num_heads, name=name)
    converted = convert_timm_vit_state_dict(state_dict, config)
    model: PreTrainedModel = (
        DeiTForImageClassificationWithTeacher(config)
        if isinstance(config, DeiTConfig)
        else ViTForImageClassification(config)
    )
    ensure_eager(model, switch=True)
    load_state_dict_checked(model, converted, what="converted timm checkpoint")
    return model.eval()


def load_timm_checkpoint(
    path: str | Path, *, num_heads: int | None = None, name: str | None = None
) -> PreTrainedModel:
    """Read a timm ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` checkpoint and return the HF model."""
    state_dict = load_weights(path)
    return build_timm_model(state_dict, num_heads=num_heads, name=name)
