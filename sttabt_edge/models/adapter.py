"""Embedding and head of a supported HF classifier, with input validation.

The layer loop in :mod:`sttabt_edge.method.sparse` sits between these two functions.
Bad input fails here with a message a user can act on, before any compute.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sttabt_edge import compat
from sttabt_edge.compat import ModelParts
from sttabt_edge.errors import InputError


def embed(parts: ModelParts, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs -> (tokens (B, N, C), pad_mask (B, N) bool, True for real tokens)."""
    if parts.image:
        return _embed_vit(parts, inputs)
    return _embed_bert(parts, inputs)


def _embed_vit(parts: ModelParts, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if "pixel_values" not in inputs:
        raise InputError("vision model needs `pixel_values` of shape (B, 3, H, W)")
    px = inputs["pixel_values"]
    if px.dim() != 4:
        raise InputError(f"pixel_values must be (B, 3, H, W), got shape {tuple(px.shape)}")
    if px.shape[0] == 0:
        raise InputError("empty batch: pixel_values has batch size 0")
    want = compat.vit_image_size(parts.embeddings)
    if px.shape[1] != 3 or tuple(px.shape[2:]) != want:
        raise InputError(
            f"wrong image size: got {tuple(px.shape[1:])}, the model expects (3, {want[0]}, {want[1]}); "
            "resize/crop first (sttabt_edge.runtime.ImagePreprocess does it)"
        )
    weight_dtype = compat.vit_position_embeddings(parts.embeddings).dtype
    x = parts.embeddings(px.to(weight_dtype))  # (B, N, C) incl. prefix tokens
    pad = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return x, pad


def _embed_bert(parts: ModelParts, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if "input_ids" not in inputs:
        raise InputError("text model needs `input_ids` of shape (B, N)")
    ids = inputs["input_ids"]
    if ids.dim() != 2:
        raise InputError(f"input_ids must be (B, N), got shape {tuple(ids.shape)}")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise InputError(f"empty batch: input_ids has shape {tuple(ids.shape)}")
    limit = compat.bert_max_positions(parts.embeddings)
    if ids.shape[1] > limit:
        raise InputError(
            f"sequence of {ids.shape[1]} tokens is longer than the model allows ({limit} positions); "
            "truncate it when tokenizing"
        )
    mask = inputs.get("attention_mask")
    pad = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    if pad.shape != ids.shape:
        raise InputError(f"attention_mask shape {tuple(pad.shape)} != input_ids shape {tuple(ids.shape)}")
    if not _tracing() and not bool(pad[:, 0].all()):  # data check: skipped while exporting
        raise InputError("every sequence must start with a real [CLS] token (right padding only)")
    x = compat.bert_embed(parts.embeddings, ids, inputs.get("token_type_ids"))
    return x, pad


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def classify(parts: ModelParts, prefix_hidden: torch.Tensor) -> torch.Tensor:
    """Final hidden states of the prefix tokens (B, P, C) -> logits (B, num_labels)."""
    if parts.image:
        assert parts.final_norm is not None  # compat.model_parts finds one in every ViT/DeiT
        z = parts.final_norm(prefix_hidden)
        logits = [head(z[:, i]) for i, head in enumerate(parts.classifiers)]
        return logits[0] if len(logits) == 1 else torch.stack(logits, 0).mean(0)
    pooled = prefix_hidden[:, 0] if parts.pooler is None else parts.pooler(prefix_hidden)
    if not parts.classifiers:
        return pooled
    if parts.dropout is not None:
        pooled = parts.dropout(pooled)
    return parts.classifiers[0](pooled)
