"""One encoder layer computed on a subset of tokens.

Queries (and everything after attention: O projection, residual, MLP) run only on
the tokens this layer must output; keys and values on the tokens it receives. This is
where the FLOPs and latency savings come from. The block drives the model's own
submodules (see :mod:`sttabt_edge.compat`), so no upstream forward code is copied.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from sttabt_edge.compat import LayerParts
from sttabt_edge.method.tokens import batched_gather


class BlockOutput(NamedTuple):
    hidden: torch.Tensor  # (B, Nq, C)
    attn: torch.Tensor | None  # (B, H, Nq, Nk) probabilities
    keys: torch.Tensor | None  # (B, H, Nk, D) for token-merging metrics


def attention_probs(
    q: torch.Tensor, k: torch.Tensor, key_bias: torch.Tensor | None, key_weight: torch.Tensor | None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + bias), then optional multiplicative key weights.

    Weighting after the softmax and renormalizing equals removing the keys whose
    weight is 0 — exactly — and stays differentiable in soft weights.
    """
    # scale the (B, H, Nq, D) queries, not the larger (B, H, Nq, Nk) scores; a Python float, so the
    # exported graph multiplies by a constant instead of computing it from the runtime shape
    q = q * (int(q.shape[-1]) ** -0.5)
    scores = torch.matmul(q, k.transpose(-1, -2))  # (B, H, Nq, Nk)
    if key_bias is not None:
        scores = scores + key_bias
    probs = torch.softmax(scores, dim=-1)
    if key_weight is not None:
        probs = probs * key_weight
        probs = probs / probs.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)
    return probs


def block_forward(
    layer: LayerParts,
    x: torch.Tensor,
    num_heads: int,
    q_idx: torch.Tensor | int | None = None,
    key_bias: torch.Tensor | None = None,
    key_weight: torch.Tensor | None = None,
    need_attn: bool = False,
    need_keys: bool = False,
    dropout: float = 0.0,
) -> BlockOutput:
    """Run one layer.

    x: (B, Nk, C) tokens the layer receives. q_idx: (B, Nq) positions inside x whose
    outputs are needed (None = all; a count P, an int or a 0-dim tensor, = the first P, e.g.
    the prefix or a depth-ordered set: a slice, no gather). key_bias: additive (B, 1, 1, Nk) (padding, ToMe size). key_weight:
    multiplicative (B, 1, 1, Nk) soft/hard key mask (mask mode).
    """
    b, nk, c = x.shape
    h = layer.norm1(x) if layer.pre_norm else x
    res = query_rows(x, q_idx)
    if num_heads == 1 and key_weight is None:
        ctx, attn, k = _one_head_attention(layer, h, q_idx, key_bias, need_attn)
        return _block_tail(layer, ctx, res, dropout, attn, k if need_keys else None)
    hq = query_rows(h, q_idx)
    nq = hq.shape[1]
    q = _split_heads(layer.q(hq), b, nq, num_heads)  # (B, H, Nq, D)
    k = _split_heads(layer.k(h), b, nk, num_heads)  # (B, H, Nk, D)
    v = _split_heads(layer.v(h), b, nk, num_heads)  # (B, H, Nk, D)
    attn = None
    if need_attn or key_weight is not None:
        attn = attention_probs(q, k, key_bias, key_weight)
        ctx = torch.matmul(attn, v)  # (B, H, Nq, D)
    else:
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias)
    ctx = ctx.squeeze(1) if num_heads == 1 else ctx.transpose(1, 2).reshape(b, nq, -1)  # (B, Nq, C)
    return _block_tail(layer, ctx, res, dropout, attn if need_attn else None, k if need_keys else None)


def _block_tail(
    layer: LayerParts,
    ctx: torch.Tensor,
    res: torch.Tensor,
    dropout: float,
    attn: torch.Tensor | None,
    keys: torch.Tensor | None,
) -> BlockOutput:
    """O projection, residuals and MLP on the query rows. ctx, res: (B, Nq, C)."""
    a = F.dropout(layer.o(ctx), dropout, layer.o.training)
    if layer.pre_norm:
        y = res + a
        y = y + F.dropout(layer.fc2(layer.act(layer.fc1(layer.norm2(y)))), dropout, layer.o.training)
    else:
        y = layer.norm1(res + a)
        y = layer.norm2(y + F.dropout(layer.fc2(layer.act(layer.fc1(y))), dropout, layer.o.training))
    return BlockOutput(y, attn, keys)


def _one_head_attention(
    layer: LayerParts,
    h: torch.Tensor,
    q_idx: torch.Tensor | int | None,
    key_bias: torch.Tensor | None,
    need_attn: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One head (the default ApproxNet): (B, N, D) tensors, no head axis, and Q, K, V from one
    product when every row is a query. In an exported graph that is one MatMul and one bias Add
    where there were three of each, and no Unsqueeze / Squeeze per tensor: the ApproxNet's
    products are small enough that per-node dispatch, not arithmetic, sets their cost.
    Returns ctx (B, Nq, C), probabilities (B, 1, Nq, Nk) or None, keys (B, 1, Nk, D)."""
    if q_idx is None:
        w = torch.cat([layer.q.weight, layer.k.weight, layer.v.weight])  # (3C, C)
        bias = torch.cat([layer.q.bias, layer.k.bias, layer.v.bias])  # folded into one initializer
        q, k, v = F.linear(h, w, bias).chunk(3, dim=-1)  # (B, N, C) each
    else:  # separate products, so a graph that reads only the probabilities drops V (the top layer)
        q, k, v = layer.q(query_rows(h, q_idx)), layer.k(h), layer.v(h)  # (B, Nq | Nk, C)
    bias3 = None if key_bias is None else key_bias.flatten(1, 2)  # (B, 1, Nk), or (B, Nq, Nk)
    if need_attn:
        probs = attention_probs(q, k, bias3, None)  # (B, Nq, Nk)
        ctx = torch.matmul(probs, v)
        return ctx, probs.unsqueeze(1), k.unsqueeze(1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias3), None, k.unsqueeze(1)


def _split_heads(t: torch.Tensor, b: int, n: int, num_heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, H, N, D). One head (the default ApproxNet) is an unsqueeze: no runtime-shape
    Reshape / Transpose nodes, which cost more than its (N, 48)-sized products in the exported graph."""
    if num_heads == 1:
        return t.unsqueeze(1)
    return t.view(b, n, num_heads, -1).transpose(1, 2)


def query_rows(x: torch.Tensor, q_idx: torch.Tensor | int | None) -> torch.Tensor:
    """The (B, Nq, C) rows of x whose outputs a layer computes (see block_forward's q_idx)."""
    if q_idx is None:
        return x
    if isinstance(q_idx, int) or q_idx.dim() == 0:  # a count (0-dim while tracing): a slice
        return x[:, :q_idx]
    return batched_gather(x, q_idx)


def key_padding_bias(padded: bool, pad_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """Padding bias of a full-length layer input; None where inputs are never padded (images: an
    all-zero (B, H, N, N) add per layer is measurable in the exported graphs)."""
    return padding_bias(pad_mask, dtype) if padded else None


def padding_bias(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, K) bool -> additive key bias (B, 1, 1, K): 0 for real tokens, dtype-min for the rest."""
    bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    bias = bias.masked_fill(~valid, torch.finfo(dtype).min)
    return bias[:, None, None, :]
