"""Analytic FLOPs of a (pruned) forward pass, per sample.

Convention — the same as ``torch.utils.flop_counter.FlopCounterMode``: 2 FLOPs per
multiply-accumulate of matmuls, linears (bias adds not counted) and convolutions.
Elementwise ops, activations, softmax, layernorm, residual adds, gathers and
embedding lookups are NOT counted: they are O(N·C) and small next to the matmuls, and
leaving them out keeps the numbers comparable with FlopCounterMode and the papers.

Counts are per sample, from the real (unpadded) token counts: a padded batch does more
work than this on its padding, but that is a batching artefact, not a property of the
method, and per-sample numbers do not depend on who else is in the batch. Soft
(mask-mode) counts give fractional, "expected" FLOPs.

Note: FlopCounterMode does not count ``aten._scaled_dot_product_flash_attention_for_cpu``
(what ``F.scaled_dot_product_attention`` runs on CPU), so counting the sparse path on
CPU needs a ``custom_mapping`` for it (see tests/method/test_flops.py); these formulas count
the attention matmuls whatever kernel runs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
from torch import nn

from sttabt_edge import compat
from sttabt_edge.compat import ModelParts


class CountedOutput(Protocol):
    """What :func:`output_flops` reads of a forward (``SparseOutput``): (B, L) counts, (B, N) real mask."""

    n_in: torch.Tensor
    n_out: torch.Tensor
    pad_mask: torch.Tensor


class CostReporter(Protocol):
    """A reducer's own cost (``Reducer.extra_flops`` / ``decision_flops``): the method layer does not
    import the reducers, they report what they spend."""

    def extra_flops(
        self, inputs: Mapping[str, torch.Tensor], pad_mask: torch.Tensor
    ) -> torch.Tensor | None: ...

    def decision_flops(self, parts: ModelParts, pad_mask: torch.Tensor) -> torch.Tensor | None: ...


Count = torch.Tensor | float  # a per-sample tensor or a plain number

_FLOAT = torch.float64  # exact for integer counts up to 2**53 (~9e15 FLOPs)


def layer_flops(n_q: Count, n_k: Count, hidden: int, intermediate: int, attn_dim: int | None = None) -> Count:
    """One encoder layer computing ``n_q`` query rows over ``n_k`` keys/values.

    Q, O and the MLP run on the query rows only; K and V on all keys (see block.py).
    ``attn_dim`` is the all-heads Q/K/V width (defaults to ``hidden``). Elementwise over
    tensors, so (B, L) counts give (B, L) FLOPs.
    """
    a = hidden if attn_dim is None else attn_dim
    proj_q_o = 2 * n_q * hidden * a * 2  # Q projection + O projection
    proj_kv = 2 * n_k * hidden * a * 2  # K and V projections
    attention = 2 * n_q * n_k * a * 2  # scores q·kᵀ and context p·v (summed over heads)
    mlp = 2 * n_q * hidden * intermediate * 2  # fc1 + fc2
    return proj_q_o + proj_kv + attention + mlp


def _as_float(n: Count) -> Count:
    return n.to(_FLOAT) if isinstance(n, torch.Tensor) else float(n)


def _linear_flops(module: nn.Module | None) -> int:
    """FLOPs of every nn.Linear inside ``module`` applied to one token."""
    if module is None:
        return 0
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def _patch_conv(parts: ModelParts) -> nn.Conv2d:
    convs = [m for m in parts.embeddings.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != 1:
        raise ValueError(f"expected one patch-projection Conv2d in the ViT embeddings, found {len(convs)}")
    return convs[0]


def _num_patches(conv: nn.Conv2d, image_size: tuple[int, int]) -> int:
    """Output positions of ``conv`` on the model's configured image (standard conv arithmetic)."""
    if isinstance(conv.padding, str):  # "same" / "valid": no ViT patch embedding uses them
        raise ValueError(f"patch convolution with padding={conv.padding!r} is not supported")
    out = []
    for size, k, s, p, d in zip(
        image_size, conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True
    ):
        out.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
    return out[0] * out[1]


def embedding_flops(parts: ModelParts, n_tokens: Count | None = None) -> Count:
    """FLOPs of the embedding layer for one sample.

    ViT/DeiT: the patch convolution, 2·num_patches·C·(3·P·P); ``n_tokens`` (tokens
    including the prefix) overrides the patch count of the configured image size.
    BERT: 0 — token/position/type embeddings are lookups.
    """
    if not parts.image:
        return torch.zeros_like(n_tokens, dtype=_FLOAT) if isinstance(n_tokens, torch.Tensor) else 0.0
    conv = _patch_conv(parts)
    per_patch = (
        2 * conv.out_channels * (conv.in_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1]
    )
    if n_tokens is None:
        return float(per_patch * _num_patches(conv, compat.vit_image_size(parts.embeddings)))
    return (_as_float(n_tokens) - parts.num_prefix_tokens) * per_patch


def head_flops(parts: ModelParts) -> float:
    """FLOPs after the encoder for one sample: the head reads only the prefix token(s).

    ViT/DeiT: each classifier on its prefix token. BERT: pooler dense on CLS + classifier.
    The final layernorm / tanh are not counted.
    """
    total = _linear_flops(parts.pooler) + sum(_linear_flops(c) for c in parts.classifiers)
    return float(total)


def model_flops(parts: ModelParts, n_in: torch.Tensor, n_out: torch.Tensor) -> torch.Tensor:
    """Per-sample total: embedding + Σ_l layer(n_out[:, l] queries, n_in[:, l] keys) + head.

    n_in, n_out: (B, L) real token counts as in ForwardResult/SparseOutput. Returns (B,) float64.
    """
    if n_in.shape != n_out.shape or n_in.dim() != 2 or n_in.shape[1] != len(parts.layers):
        raise ValueError(
            f"n_in {tuple(n_in.shape)} and n_out {tuple(n_out.shape)} must both be (B, {len(parts.layers)})"
        )
    n_in, n_out = n_in.to(_FLOAT), n_out.to(_FLOAT)
    total = torch.zeros(n_in.shape[0], dtype=_FLOAT, device=n_in.device)  # (B,)
    for l_idx, layer in enumerate(parts.layers):
        total = total + layer_flops(
            n_out[:, l_idx], n_in[:, l_idx], layer.q.in_features, layer.fc1.out_features, layer.q.out_features
        )
    return total + embedding_flops(parts) + head_flops(parts)


def dense_flops(parts: ModelParts, n_real: Count) -> torch.Tensor:
    """The unpruned model on ``n_real`` tokens per sample (scalar or (B,)) -> (B,) float64."""
    n = torch.as_tensor(n_real, dtype=_FLOAT).reshape(-1, 1)  # (B, 1)
    counts = n.expand(-1, len(parts.layers))  # (B, L)
    return model_flops(parts, counts, counts)


def backtrack_flops(num_layers: int, num_heads: int, n_tokens: Count, num_prefix_tokens: int = 1) -> Count:
    """Cost of computing the STTABT keep masks from given attention maps, per sample.

    Per layer, on H maps N×N: the weighted row sum ``wᵀ·A_h`` of each head (a (H, 1, N) x
    (H, N, N) matmul, 2·H·N·N), then the mean of the H results (H·N, not counted). The top
    layer reads only its P prefix rows (2·H·P·N). The ``max`` head reduction costs about the
    same (H·N·N, then one 2·N·N matvec). H is the head count of the maps (the ApproxNet's).
    Getting the maps is the reducer's ``extra_flops``, not this.
    """
    n = _as_float(n_tokens)
    return (num_layers - 1) * 2 * num_heads * n * n + 2 * num_heads * num_prefix_tokens * n


def output_flops(
    parts: ModelParts,
    out: CountedOutput,
    reducer: CostReporter | None = None,
    inputs: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-sample FLOPs of one SparseClassifier forward: model + the reducer's attention source
    (``extra_flops``, e.g. the ApproxNet) + its decisions (``decision_flops``, e.g. back-tracking)."""
    total = model_flops(parts, out.n_in, out.n_out)  # (B,)
    if reducer is None:
        return total
    extra = reducer.extra_flops(inputs if inputs is not None else {}, out.pad_mask)
    if extra is not None:
        total = total + torch.as_tensor(extra, dtype=_FLOAT, device=total.device)
    decisions = reducer.decision_flops(parts, out.pad_mask)
    if decisions is not None:
        total = total + torch.as_tensor(decisions, dtype=_FLOAT, device=total.device)
    return total


def flops_summary(flops: torch.Tensor, dense: torch.Tensor) -> dict[str, float]:
    """Mean GFLOPs of a method and of the dense model, and their ratio (of means)."""
    mean, dense_mean = float(flops.double().mean()), float(dense.double().mean())
    ratio = mean / dense_mean if dense_mean > 0 else float("nan")
    return {"gflops": mean / 1e9, "dense_gflops": dense_mean / 1e9, "ratio": ratio, "saving": 1.0 - ratio}
