"""ApproxNet: a narrow copy of the model that predicts its attention maps cheaply.

Same class, depth and head count as the teacher; hidden and FFN widths divided by
``factor``. Attention maps therefore have the teacher's shape (L, B, H, N, N) and can
be back-tracked directly (:class:`sttabt_edge.reducers.sttabt.SttabtReducer`). Our own
layer loop (:func:`sttabt_edge.method.sparse.dense_forward`) runs it, so the compat
layer and adapter work unchanged. Linear ``transfers`` lift its hidden states to the
teacher's width for hidden-state distillation (:mod:`sttabt_edge.method.distill`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sttabt_edge import compat
from sttabt_edge.compat import ModelParts
from sttabt_edge.errors import InputError
from sttabt_edge.method.approx_init import area_resize, interpolate_init, upsample_transfers
from sttabt_edge.method.flops import model_flops
from sttabt_edge.method.sparse import dense_counts, dense_forward
from sttabt_edge.model_info import approx_shape_problem
from sttabt_edge.models.adapter import classify, embed

INITS = ("random", "interpolate")
WEIGHTS_FILE = "model.safetensors"
META_FILE = "approxnet.json"
FORMAT = "sttabt-approxnet"
APPROX_SCOPE = "/approx_maps/"  # name prefix of the ApproxNet's nodes in exported ONNX graphs


def approx_config(teacher_config: Any, factor: int, heads: int | None = None) -> Any:
    """Deep copy of an HF config with hidden and intermediate widths divided by ``factor``.

    Depth and labels are kept. ``heads`` (default: the teacher's) may be a divisor of the
    teacher's head count: approx head j then predicts the mean map of teacher heads
    [j g, (j+1) g), g = H / heads. Back-tracking averages heads anyway, so fewer heads
    predict the same mean map with an H/heads times cheaper softmax.
    """
    hidden, teacher_heads = int(teacher_config.hidden_size), int(teacher_config.num_attention_heads)
    inter = int(teacher_config.intermediate_size)
    if problem := approx_shape_problem(hidden, teacher_heads, inter, factor, heads):
        raise InputError(problem)
    heads = teacher_heads if heads is None else heads
    cfg = copy.deepcopy(teacher_config)
    cfg.hidden_size = hidden // factor
    cfg.intermediate_size = inter // factor
    cfg.num_attention_heads = heads
    cfg._attn_implementation = "eager"
    return cfg


def group_heads(attn: torch.Tensor, heads: int) -> torch.Tensor:
    """Teacher maps (..., H, N, N) -> (..., heads, N, N): mean over groups of H / heads consecutive heads."""
    h = attn.shape[-3]
    if h == heads:
        return attn
    if h % heads:
        raise ValueError(f"{h} heads cannot be grouped into {heads}")
    return attn.unflatten(-3, (heads, h // heads)).mean(dim=-3)


@dataclass
class ApproxOutput:
    attentions: torch.Tensor  # (L, B, H, N, N) probabilities
    hidden_states: list[torch.Tensor]  # L+1 entries (B, N, C_small): embeddings, then each layer
    logits: torch.Tensor  # (B, num_labels)
    pad_mask: torch.Tensor  # (B, N) bool, True = real token


@dataclass
class TeacherTargets:
    attentions: torch.Tensor  # (L, B, H, N, N)
    hidden_states: list[torch.Tensor]  # L+1 entries (B, N, C)
    logits: torch.Tensor  # (B, K)
    pad_mask: torch.Tensor  # (B, N)


class MapsPass(nn.Module):
    """The back-tracking maps pass, run as a module call so that the exported graph's nodes
    are named ``/approx_maps/...``: INT8 quantization finds and keeps them fp32 by that prefix
    (``sttabt_edge.export.quantize``), because token choice is what quantization noise hurts most."""

    def forward(self, parts: ModelParts, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        x, pad = embed(parts, inputs)  # (B, N, c), (B, N)
        return dense_forward(parts, x, pad, need_attn=True, prefix_only_top=True).attentions


class ApproxNet(nn.Module):
    """Narrow HF model of the teacher's class + linear transfers to the teacher's width."""

    model: Any  # a transformers model of the teacher's class (its .config has no stubs)

    def __init__(self, model: nn.Module, factor: int, init: str, teacher_hidden_size: int):
        super().__init__()
        self.model = model
        self.parts: ModelParts = compat.model_parts(model)
        self.factor = factor
        self.init = init
        self.teacher_hidden_size = teacher_hidden_size
        c = self.parts.hidden_size
        self.transfers = nn.ModuleList(
            nn.Linear(c, teacher_hidden_size) for _ in range(len(self.parts.layers) + 1)
        )
        self.approx_maps = MapsPass()  # no parameters: names the exported nodes (APPROX_SCOPE)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> ApproxOutput:
        x, pad = embed(self.parts, inputs)  # (B, N, c), (B, N)
        res = dense_forward(self.parts, x, pad, need_attn=True, need_hidden=True)
        logits = classify(self.parts, res.prefix_hidden)
        return ApproxOutput(torch.stack(res.attentions), res.hidden_states, logits, pad)

    @property
    def heads(self) -> int:
        """Attention heads (the teacher's, or fewer: see :func:`approx_config`)."""
        return self.parts.num_heads

    def attentions(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Predicted attention maps for back-tracking (the AttentionSource protocol).

        L maps (B, H, N, N), except the top layer's (B, H, P, N): back-tracking reads only
        the rows of the prefix tokens there, so its other query rows (and their
        projections and MLP) are never computed. :meth:`forward` gives the full maps.
        """
        return self.approx_maps(self.parts, inputs)

    def flops(self, pad_mask: torch.Tensor) -> torch.Tensor:
        """(B,) analytic FLOPs of :meth:`attentions` on each sample's real tokens (the reducer's extra
        cost): a dense pass whose top layer computes only the prefix rows, plus the unused head."""
        n, n_out = dense_counts(pad_mask, len(self.parts.layers), self.parts.num_prefix_tokens, True)
        return model_flops(self.parts, n, n_out)  # (B,) float64, incl. patch conv and head

    # ---- persistence (sttabt_edge.method.approx_io) -------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``model.safetensors`` and ``approxnet.json`` atomically into ``directory``."""
        from sttabt_edge.method.approx_io import save_approxnet

        return save_approxnet(self, directory)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        teacher_config: Any = None,
        *,
        factor: int | None = None,
        device: str | torch.device = "cpu",
    ) -> ApproxNet:
        """Rebuild from :meth:`save` output (safetensors only); shape mismatches raise CheckpointMismatchError.

        ``teacher_config`` / ``factor``, when given, are checked against the checkpoint. A damaged
        or foreign file (invalid JSON, a pickle renamed .safetensors) is one CheckpointMismatchError line.
        """
        from sttabt_edge.method.approx_io import load_approxnet

        return load_approxnet(cls, directory, teacher_config, factor=factor, device=device)


def build_approxnet(
    teacher: nn.Module, factor: int = 4, init: str = "random", seed: int = 0, heads: int | None = None
) -> ApproxNet:
    """ApproxNet for ``teacher``: HF init of the small config, or its weights area-interpolated.

    ``heads``: see :func:`approx_config` (default: the teacher's head count).

    Deterministic given ``seed``; the global RNG state is left untouched.
    """
    if init not in INITS:
        raise InputError(f"init must be one of {INITS}, got {init!r}")
    teacher_parts = compat.model_parts(teacher)  # also rejects unsupported classes
    cfg = approx_config(teacher.config, factor, heads)
    ref = next(teacher.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ApproxNet(type(teacher)(cfg), factor, init, teacher_parts.hidden_size)
    net = net.to(device=ref.device, dtype=ref.dtype)
    if init == "interpolate":
        interpolate_init(teacher_parts, net.parts, net.model)
        upsample_transfers(net.transfers)
    return net.train(teacher.training)


@torch.no_grad()
def teacher_targets(parts: ModelParts, inputs: Mapping[str, torch.Tensor]) -> TeacherTargets:
    """The dense teacher's attentions, hidden states and logits (no grad) for distillation."""
    x, pad = embed(parts, inputs)
    res = dense_forward(parts, x, pad, need_attn=True, need_hidden=True)
    return TeacherTargets(
        torch.stack(res.attentions), res.hidden_states, classify(parts, res.prefix_hidden), pad
    )


__all__ = [
    "APPROX_SCOPE",
    "ApproxNet",
    "ApproxOutput",
    "MapsPass",
    "TeacherTargets",
    "approx_config",
    "area_resize",
    "build_approxnet",
    "group_heads",
    "interpolate_init",
    "teacher_targets",
]
