"""ApproxNet distillation loss: attention KL + hidden-state MSE (+ optional logits KD).

Pure functions over tensors. The teacher targets come from a dense pass of the main
model (:func:`sttabt_edge.method.approxnet.teacher_targets`); they are detached here so
only the ApproxNet and its transfers learn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sttabt_edge.method.approxnet import ApproxOutput, group_heads
from sttabt_edge.method.backtrack import layer_importance, row_weights, topk_backtrack

COMPONENTS = ("attn_kl", "hidden_mse", "embed_mse", "logits_kd", "track_kl")


@dataclass(frozen=True)
class DistillWeights:
    attn: float = 1.0  # attention KL: what back-tracking consumes
    hidden: float = 1.0  # hidden MSE of layer outputs 1..L (through the transfers)
    embed: float = 1.0  # MSE of the embedding output (transfers[0])
    logits: float = 0.0  # logits KD; off by default (ApproxNet only needs attention)
    temperature: float = 1.0
    track: float = 0.0  # back-tracking KL: the importance scores back-tracking ranks tokens by
    track_ratio: float = 0.5  # keep ratio of the teacher's back-tracking that picks the rows compared
    track_p: float = 0.1  # back-tracking's propagation weight p


def attention_kl(
    teacher_attn: torch.Tensor, student_attn: torch.Tensor, pad_mask: torch.Tensor
) -> torch.Tensor:
    """KL(teacher || student) per query row, mean over heads, non-pad rows, then layers.

    (L, B, H, N, N) teacher, (L, B, h, N, N) student with h dividing H (the teacher's heads
    are averaged in groups, see :func:`group_heads`), (B, N) -> scalar. Zero probabilities
    (padded keys) add nothing: xlogy gives 0 * log 0 = 0, and the student log is clamped.
    """
    t = group_heads(teacher_attn.detach(), student_attn.shape[-3])
    tiny = torch.finfo(student_attn.dtype).tiny
    kl = (torch.xlogy(t, t) - t * torch.log(student_attn.clamp_min(tiny))).sum(dim=-1)  # (L, B, H, N)
    kl = kl.mean(dim=2)  # (L, B, N)
    rows = pad_mask.to(kl.dtype)  # (B, N)
    per_layer = (kl * rows).sum(dim=(1, 2)) / rows.sum().clamp_min(1.0)  # (L,)
    return per_layer.mean()


def backtrack_kl(
    teacher_attn: torch.Tensor,
    student_attn: torch.Tensor,
    pad_mask: torch.Tensor,
    num_prefix_tokens: int = 1,
    keep_ratio: float = 0.5,
    p: float = 0.1,
) -> torch.Tensor:
    """KL between the teacher's and the student's back-tracked importance, per layer.

    (L, B, H, N, N) teacher, (L, B, h, N, N) student, (B, N) -> scalar. The teacher's own
    top-k back-tracking fixes which rows each layer reads and their weights; both maps are
    read through them and the importances, normalised over real tokens, are compared.
    The row-averaged attention KL weighs the CLS row 1/N, so a student can lower it and
    still rank the tokens CLS reads wrongly; this term is where the ranking comes from.
    """
    t = teacher_attn.detach()
    bt = topk_backtrack(t, pad_mask, keep_ratio, num_prefix_tokens, p)  # nested keep sets, teacher scores
    num_layers = t.shape[0]
    pad = pad_mask.to(t.dtype)
    tiny = torch.finfo(student_attn.dtype).tiny
    kls = []
    for layer in reversed(range(num_layers)):
        # the row weights back-tracking used at this layer (the top layer's rows: the prefix, uniformly)
        above = bt.scores[layer + 1] if layer + 1 < num_layers else bt.keep[-1].to(t.dtype)
        w = row_weights(bt.keep[layer + 1], above, p)  # (B, N)
        s_t = bt.scores[layer] * pad  # (B, N): already computed by topk_backtrack with these weights
        rows = num_prefix_tokens if layer == num_layers - 1 else None
        s_s = layer_importance(student_attn[layer], w, rows=rows) * pad
        q_t = s_t / s_t.sum(dim=1, keepdim=True).clamp_min(tiny)
        q_s = s_s / s_s.sum(dim=1, keepdim=True).clamp_min(tiny)
        kls.append((torch.xlogy(q_t, q_t) - q_t * torch.log(q_s.clamp_min(tiny))).sum(dim=1).mean())
    return torch.stack(kls).mean()


def masked_mse(a: torch.Tensor, b: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the channels of non-pad tokens. (B, N, C) x2, (B, N) -> scalar."""
    rows = pad_mask.to(a.dtype).unsqueeze(-1)  # (B, N, 1)
    return ((a - b).square() * rows).sum() / (rows.sum() * a.shape[-1]).clamp_min(1.0)


def logits_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: KL(softmax(t/T) || softmax(s/T)) * T^2, mean over the batch."""
    log_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2


def approx_distill_loss(
    student: ApproxOutput,
    teacher_attn: torch.Tensor,
    teacher_hidden: Sequence[torch.Tensor],
    teacher_logits: torch.Tensor | None,
    pad_mask: torch.Tensor,
    transfers: Sequence[nn.Module],
    weights: DistillWeights = DistillWeights(),
    num_prefix_tokens: int = 1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the components; returns (loss, detached component tensors).

    Unlike the reference, the hidden MSE covers every layer output 1..L, the last one
    included: no attention map depends on the last output, but distilling it anchors
    the top layer's weights (whose attention does matter) and feeds the logits KD.
    """
    n_layers = student.attentions.shape[0]
    if len(teacher_hidden) != n_layers + 1 or len(student.hidden_states) != n_layers + 1:
        raise ValueError(
            f"expected {n_layers + 1} hidden states (embeddings + each layer), got teacher "
            f"{len(teacher_hidden)} and student {len(student.hidden_states)}"
        )
    if len(transfers) != n_layers + 1:
        raise ValueError(f"expected {n_layers + 1} transfers, got {len(transfers)}")
    attn = attention_kl(teacher_attn, student.attentions, pad_mask)
    hs, ht = student.hidden_states, teacher_hidden
    embed = masked_mse(transfers[0](hs[0]), ht[0].detach(), pad_mask)
    hidden = torch.stack(
        [masked_mse(transfers[i](hs[i]), ht[i].detach(), pad_mask) for i in range(1, n_layers + 1)]
    ).mean()
    kd = attn.new_zeros(())
    if weights.logits > 0 and teacher_logits is not None:
        kd = logits_kd(student.logits, teacher_logits, weights.temperature)
    track = attn.new_zeros(())
    if weights.track > 0:
        track = backtrack_kl(
            teacher_attn,
            student.attentions,
            pad_mask,
            num_prefix_tokens,
            weights.track_ratio,
            weights.track_p,
        )
    loss = (
        weights.attn * attn
        + weights.hidden * hidden
        + weights.embed * embed
        + weights.logits * kd
        + weights.track * track
    )
    parts = {"attn_kl": attn, "hidden_mse": hidden, "embed_mse": embed, "logits_kd": kd, "track_kl": track}
    return loss, {k: v.detach() for k, v in parts.items()}


def components_to_floats(components: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """For logging, outside the forward path (syncs with the device)."""
    return {k: float(v) for k, v in components.items()}
