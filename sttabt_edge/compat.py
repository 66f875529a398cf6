"""Every transformers-internal attribute path the project touches lives here.

When transformers renames a submodule, this is the one file to change. The rest of the
code sees only :class:`LayerParts` and :class:`ModelParts`: plain references to the
existing submodules (Q/K/V/O projections, MLP, norms), which our own layer loop drives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

SUPPORTED_CLASSES = (
    "BertForSequenceClassification",
    "BertModel",
    "ViTForImageClassification",
    "DeiTForImageClassification",
    "DeiTForImageClassificationWithTeacher",
)


@dataclass(frozen=True)
class LayerParts:
    """References to one encoder layer's submodules.

    pre_norm=True (ViT/DeiT): x + attn(norm1(x)); x + mlp(norm2(x)).
    pre_norm=False (BERT):    norm1(x + attn(x)); norm2(x + ffn(x)).
    """

    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    fc1: nn.Linear
    fc2: nn.Linear
    act: Callable[[torch.Tensor], torch.Tensor]
    norm1: nn.LayerNorm
    norm2: nn.LayerNorm
    pre_norm: bool


@dataclass(frozen=True)
class ModelParts:
    """What the sparse forward needs from one HF classifier."""

    family: str  # "vit" | "bert"
    layers: tuple[LayerParts, ...]
    num_heads: int
    hidden_size: int
    intermediate_size: int
    num_prefix_tokens: int
    embeddings: nn.Module
    final_norm: nn.LayerNorm | None  # ViT: applied to prefix tokens before the head
    pooler: nn.Module | None  # BERT: dense+tanh on CLS (None for BertModel without pooler)
    classifiers: tuple[nn.Module, ...]  # one per prefix token used by the head; logits are averaged
    dropout: nn.Module | None  # BERT classifier dropout (identity in eval)
    dropout_p: float  # hidden dropout inside layers (applied only in training)

    @property
    def image(self) -> bool:
        """Image inputs (ViT / DeiT: a patch embedding, a fixed token count, never padded, a norm
        before the heads); else text (BERT). The one modality test of the PyTorch side (the
        torch-free one is the runtime contract's ``FamilyIO``), so no layer compares family names."""
        return self.family == "vit"


def class_name(model: nn.Module) -> str:
    return type(model).__name__


def attn_implementation(model: nn.Module) -> str | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "_attn_implementation", None)


def set_eager_attention(model: Any) -> None:
    """Switch a loaded model to eager attention (needed for attention probabilities)."""
    model.set_attn_implementation("eager")


def _vit_layer(layer: Any) -> LayerParts:
    att = layer.attention
    return LayerParts(
        q=att.q_proj,
        k=att.k_proj,
        v=att.v_proj,
        o=att.o_proj,
        fc1=layer.mlp.fc1,
        fc2=layer.mlp.fc2,
        act=layer.mlp.activation_fn,
        norm1=layer.layernorm_before,
        norm2=layer.layernorm_after,
        pre_norm=True,
    )


def _bert_layer(layer: Any) -> LayerParts:
    sa = layer.attention.self
    return LayerParts(
        q=sa.query,
        k=sa.key,
        v=sa.value,
        o=layer.attention.output.dense,
        fc1=layer.intermediate.dense,
        fc2=layer.output.dense,
        act=layer.intermediate.intermediate_act_fn,
        norm1=layer.attention.output.LayerNorm,
        norm2=layer.output.LayerNorm,
        pre_norm=False,
    )


def vision_backbone(model: nn.Module) -> Any:
    """The ViTModel/DeiTModel inside a classifier."""
    for name in ("vit", "deit"):
        if hasattr(model, name):
            return getattr(model, name)
    raise TypeError(f"{class_name(model)} has no ViT/DeiT backbone")


def bert_backbone(model: nn.Module) -> Any:
    return getattr(model, "bert", model)


def model_parts(model: nn.Module) -> ModelParts:
    """Collect the submodules of a supported HF classifier."""
    name = class_name(model)
    hf: Any = model  # a transformers classifier: its attribute tree has no static types
    cfg = hf.config
    if name not in SUPPORTED_CLASSES:
        raise TypeError(f"unsupported model class {name}; supported: {', '.join(SUPPORTED_CLASSES)}")
    if name.startswith(("ViT", "DeiT")):
        bb = vision_backbone(model)
        if name == "DeiTForImageClassificationWithTeacher":
            classifiers: tuple[nn.Module, ...] = (hf.cls_classifier, hf.distillation_classifier)
        else:
            classifiers = (hf.classifier,)
        prefix = 2 if hasattr(bb.embeddings, "distillation_token") else 1
        return ModelParts(
            family="vit",
            layers=tuple(_vit_layer(layer) for layer in bb.layers),
            num_heads=cfg.num_attention_heads,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_prefix_tokens=prefix,
            embeddings=bb.embeddings,
            final_norm=bb.layernorm,
            pooler=None,
            classifiers=classifiers,
            dropout=None,
            dropout_p=float(cfg.hidden_dropout_prob),
        )
    bb = bert_backbone(model)
    return ModelParts(
        family="bert",
        layers=tuple(_bert_layer(layer) for layer in bb.encoder.layer),
        num_heads=cfg.num_attention_heads,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_prefix_tokens=1,
        embeddings=bb.embeddings,
        final_norm=None,
        pooler=getattr(bb, "pooler", None),
        classifiers=(hf.classifier,) if hasattr(model, "classifier") else (),
        dropout=getattr(model, "dropout", None),
        dropout_p=float(cfg.hidden_dropout_prob),
    )


def vit_image_size(embeddings: Any) -> tuple[int, int]:
    size = embeddings.patch_embeddings.image_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def vit_patch_embed(embeddings: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """Patch projection only: (B, 3, H, W) -> (B, N_patch, C)."""
    return embeddings.patch_embeddings(pixel_values)


def vit_prefix_tokens(embeddings: Any) -> list[torch.Tensor]:
    toks = [embeddings.cls_token]
    if hasattr(embeddings, "distillation_token"):
        toks.append(embeddings.distillation_token)
    return toks


def vit_position_embeddings(embeddings: Any) -> torch.Tensor:
    return embeddings.position_embeddings


def bert_max_positions(embeddings: Any) -> int:
    return int(embeddings.position_embeddings.num_embeddings)


def bert_embed(embeddings: Any, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
    return embeddings(input_ids=input_ids, token_type_ids=token_type_ids)


def base_model_prefix(model: nn.Module) -> str:
    """Name of the backbone attribute ("vit", "deit", "bert"); "" for a bare backbone."""
    return str(getattr(model, "base_model_prefix", "") or "")
