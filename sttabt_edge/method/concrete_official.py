"""Concrete masking as the official code does it (``run_bert_with_concrete``).

Per layer, from the top down (gmlwns2000/sttabt, ``models/sparse_token.py``):

1. scores: the ApproxNet's pre-softmax attention scores z-scored per query row over the
   real keys, through the standard normal CDF Φ, averaged over heads: U (B, R, N). The
   z-score is shift-invariant, so the log-probabilities the maps carry give the same U as the
   scores (``log p = score - logsumexp``), without exporting a second set of maps;
2. back-tracking: ``s = Σ_q m[q] (p c[q] + (1 - p)) U[q] / Σ_q m[q]`` over the layer's kept
   output rows (m: the soft mask of the layer above, c: its score), p = 0.1;
3. ``s / max(s)``, then ``(0.01 + 0.99 s)`` on real tokens;
4. mask = σ((logit s - θ_l) / T), T = 0.1, θ_l one learned threshold logit per layer: the
   official ``σ((logit σ(p_logit) + logit s) / T)`` with θ_l = -p_logit (``logit σ(x) = x``), so
   a higher θ keeps fewer tokens, as for every threshold here; no random noise;
5. soft union nesting ``max(mask, m)``; hard masks ``>= 0.5`` at inference and in the hard
   phase (the soft masks still weigh the rows of the next step, as officially).

Deviations (documented in docs/method.md): every layer keeps at least min(n_real,
``min_keep``) tokens (the short-input floor); the hard-phase and init calibration follow the
project's trainer (see train/concrete.py).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from sttabt_edge.method.backtrack import DEFAULT_MIN_KEEP, AttentionMaps, Backtrack, HeadReduce, check_maps
from sttabt_edge.method.concrete import ThresholdModule
from sttabt_edge.method.tokens import prefix_mask, rank_topk_mask

EPS = 1e-7  # the official EPS
EMPTY_BASE = 0.01  # the official empty_base: every real token keeps a small score
TINY_PROB = 1e-30  # log of an underflowed probability (keeps z-scores finite)


def standardized_scores(attn_l: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
    """Φ of the per-row z-score of the attention scores over real keys, head mean.

    attn_l (B, H, R, N) probabilities; pad_mask (B, N). Returns U (B, R, N).
    """
    logp = torch.log(attn_l.clamp_min(TINY_PROB))  # = scores - logsumexp(scores): same z-scores
    real = pad_mask[:, None, None, :].to(logp.dtype)  # (B, 1, 1, N)
    count = real.sum(dim=-1, keepdim=True)  # (B, 1, 1, 1)
    mean = (logp * real).sum(dim=-1, keepdim=True) / (count + EPS)
    var = (((logp - mean) * real) ** 2).sum(dim=-1, keepdim=True) / (count + EPS)
    z = (logp - mean) / (torch.sqrt(var) + EPS)
    phi = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))  # (B, H, R, N)
    return phi.mean(dim=1)


def official_concrete_backtrack(
    attn: AttentionMaps,
    pad_mask: torch.Tensor,
    logits: torch.Tensor,
    num_prefix_tokens: int = 1,
    p: float = 0.1,
    temperature: float = 0.1,
    hard: bool = True,
    min_keep: int = DEFAULT_MIN_KEEP,
) -> Backtrack:
    """Official concrete masks. ``hard``: bool masks (``>= 0.5``), else soft float masks in [0, 1].

    attn: L maps (B, H, R, N) (see :mod:`.backtrack`); logits (L,) the per-layer θ_l = -p_logit. Returns
    L+1 nested masks (layer inputs, then the prefix) and the per-layer scores s_l (B, N).
    """
    num_layers, _ = check_maps(attn)
    if logits.shape != (num_layers,):
        raise ValueError(f"concrete logits must have shape ({num_layers},), got {tuple(logits.shape)}")
    dtype = attn[0].dtype
    pad = pad_mask.to(dtype)
    prefix = prefix_mask(pad_mask, num_prefix_tokens) & pad_mask
    soft_out = prefix.to(dtype)  # m: the soft mask of the layer above (the prefix at the top)
    hard_out = prefix
    score_out = prefix.to(dtype)  # c: the official last_concrete_score (1 at CLS)
    keep: list[torch.Tensor] = [hard_out if hard else soft_out]
    scores: list[torch.Tensor] = []
    n_real = pad_mask.sum(dim=1)  # (B,)
    for layer in reversed(range(num_layers)):
        u = standardized_scores(attn[layer], pad_mask)  # (B, R, N)
        r = u.shape[1]
        w = soft_out[:, :r] * (p * score_out[:, :r] + (1.0 - p))  # (B, R) row weights
        s = torch.bmm(w.unsqueeze(1), u).squeeze(1) / (soft_out.sum(dim=1, keepdim=True) + EPS)  # (B, N)
        s = s / (s.amax(dim=1, keepdim=True) + EPS)
        s = (EMPTY_BASE + (1.0 - EMPTY_BASE) * s) * pad
        logit_s = torch.log(s + EPS) - torch.log(1.0 - s + EPS)
        mask = torch.sigmoid((logit_s - logits[layer]) / temperature)  # (B, N)
        soft_in = torch.maximum(mask, soft_out) * pad
        # the short-input floor: the best-scored real tokens up to min(n_real, min_keep), in any mode
        floor = rank_topk_mask(torch.where(pad_mask, s, float("-inf")), n_real.clamp(max=min_keep), min_keep)
        hard_in = ((soft_in >= 0.5) | floor | hard_out) & pad_mask
        if not hard:
            floor_f = floor.to(dtype)
            soft_in = torch.maximum(soft_in, floor_f)
        keep.insert(0, hard_in if hard else soft_in)
        scores.insert(0, s)
        soft_out, hard_out, score_out = soft_in, hard_in, s
    return Backtrack(keep, None, scores)  # data-dependent counts: no static bounds


class OfficialConcrete(ThresholdModule):
    """Learnable per-layer θ_l of :func:`official_concrete_backtrack` (θ_l = -p_logit, the official parameter).

    Soft masks in train mode, hard masks in eval mode (the hard phase puts it in eval mode).
    ``init`` is the value θ starts at and is regularised toward (official: 1e-3 Σ (θ - init)²).
    """

    kind: Literal["official"] = "official"
    init: torch.Tensor  # buffer: the value θ is regularised toward

    def __init__(
        self, num_layers: int, init: float = 0.0, temperature: float = 0.1, min_keep: int = DEFAULT_MIN_KEEP
    ):
        super().__init__(num_layers, init, temperature, min_keep)
        self.register_buffer("init", torch.full((num_layers,), float(init)))

    def masks(
        self,
        attn: AttentionMaps,
        pad_mask: torch.Tensor,
        logits: torch.Tensor,
        num_prefix_tokens: int = 1,
        p: float = 0.1,
        head_reduce: HeadReduce = "mean",
        soft: bool = False,
        generator: torch.Generator | None = None,
    ) -> Backtrack:
        """Masks at given logits (calibration probes); ``soft``: the training-mode masks."""
        if head_reduce != "mean":
            raise ValueError("official concrete masking averages Φ over heads (head_reduce='mean')")
        return official_concrete_backtrack(
            attn, pad_mask, logits, num_prefix_tokens, p, self.temperature, not soft, self.min_keep
        )

    def regularizer(self) -> torch.Tensor:
        """The official per-layer term: 1e-3 Σ_l (p_logit_l - init)² (the same in θ = -p_logit)."""
        return 1e-3 * ((self.logits - self.init) ** 2).sum()

    def set_init(self) -> None:
        """Take the current logits as the init (after calibration), so the regulariser pulls there."""
        with torch.no_grad():
            self.init.copy_(self.logits)
