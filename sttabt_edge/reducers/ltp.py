"""Learned Token Pruning (LTP, Kim et al. 2022): per-layer learned importance thresholds.

The importance of a token after layer l is the attention it receives, averaged over
heads and over the live query rows. We multiply it by the live count (so a uniform
attention gives 1 whatever the length), i.e. it is the column sum of the head-mean
attention over live rows; thresholds then mean the same thing for short and long inputs.
Tokens below θ_l are dropped; prefix tokens and the ``min_keep`` most important real
tokens always stay.

* Inference ("remove"): hard threshold and real removal. The kept count depends on the
  data, so compacting needs one host sync per layer (:func:`compact_size`).
* Training ("mask", soft): full shapes, the key weight of each token is multiplied by
  sigmoid((importance - θ_l) / T), differentiable in θ (LTP's soft mask).
* "mask" with hard masks (eval, or ``soft=False``) equals "remove" exactly.

Shapes: attention (B, H, K, K) over K current slots; per-token tensors (B, K).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from sttabt_edge.compat import ModelParts
from sttabt_edge.method.backtrack import ratio_schedule
from sttabt_edge.method.block import BlockOutput
from sttabt_edge.method.sparse import ForwardResult, Mode, TokenState, online_forward
from sttabt_edge.method.tokens import batched_gather, compact_indices, compact_size, rank_topk_mask
from sttabt_edge.models.adapter import embed
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.spec import LtpSpec


def token_importance(attn: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """n_live * mean attention received over live query rows. (B, H, K, K), (B, K) -> (B, K).

    ``live`` is a float row weight (0/1, or soft weights in training); padding rows are 0.
    """
    a = attn.mean(dim=1)  # (B, K, K)
    return torch.bmm(live.to(a.dtype).unsqueeze(1), a).squeeze(1)  # (B, K)


def forced_mask(
    importance: torch.Tensor, valid: torch.Tensor, num_prefix_tokens: int, min_keep: int
) -> torch.Tensor:
    """Slots kept whatever θ is: the prefix and the ``min_keep`` best real tokens. (B, K) bool."""
    slot = torch.arange(importance.shape[1], device=importance.device).unsqueeze(0)  # (1, K)
    prefix = (slot < num_prefix_tokens) & valid
    if min_keep <= 0:
        return prefix
    cand = valid & ~prefix
    k = cand.sum(dim=1).clamp_max(min_keep)  # (B,)
    floor = rank_topk_mask(torch.where(cand, importance, -torch.inf), k, min_keep)
    return prefix | (floor & cand)


def threshold_keep_mask(
    importance: torch.Tensor,
    valid: torch.Tensor,
    threshold: torch.Tensor,
    num_prefix_tokens: int,
    min_keep: int,
) -> torch.Tensor:
    """Hard LTP decision: keep live slots with importance >= θ, plus the forced ones. (B, K) bool."""
    keep = (importance >= threshold) & valid
    return keep | forced_mask(importance, valid, num_prefix_tokens, min_keep)


def soft_keep_mask(
    importance: torch.Tensor,
    valid: torch.Tensor,
    threshold: torch.Tensor,
    temperature: float,
    num_prefix_tokens: int,
    min_keep: int,
) -> torch.Tensor:
    """Differentiable LTP mask sigmoid((importance - θ) / T); forced slots 1, padding 0. (B, K) float."""
    soft = torch.sigmoid((importance - threshold) / temperature)
    forced = forced_mask(importance.detach(), valid, num_prefix_tokens, min_keep)
    return torch.where(forced, torch.ones_like(soft), soft) * valid.to(soft.dtype)


def quantile_threshold(importance: torch.Tensor, candidates: torch.Tensor, num_keep: int) -> torch.Tensor:
    """θ keeping exactly ``num_keep`` of the candidate slots (pooled over the batch), barring ties.

    Midway between the num_keep-th and the next largest importance, so the same batch
    re-run reproduces the decision despite float noise. Calibration only (host syncs).
    """
    values = importance[candidates].sort(descending=True).values  # (M,)
    if values.numel() == 0:
        return importance.new_tensor(1.0)  # nothing to decide; 1 = uniform-attention level
    if num_keep <= 0:
        return values[0] + 1.0
    if num_keep >= values.numel():
        return values[-1] - 1.0
    return (values[num_keep - 1] + values[num_keep]) / 2


class LtpReducer(Reducer):
    """LTP with learnable thresholds ``θ`` (``nn.Parameter`` of shape (L,)).

    ``thresholds``: a scalar (needs ``num_layers``) or one value per layer; the default 0
    keeps everything (importances are >= 0); use :meth:`calibrate` to hit a retention
    target without training. ``soft``: in mask mode use the sigmoid mask (default: when
    ``self.training``), otherwise the hard mask. θ_{L-1} prunes after the last layer, so
    it never changes the logits (it only affects the reported keep masks).
    """

    name = "ltp"

    def __init__(
        self,
        thresholds: float | Sequence[float] | torch.Tensor = 0.0,
        num_layers: int | None = None,
        temperature: float = 0.1,
        min_keep: int = 1,
        soft: bool | None = None,
    ):
        super().__init__()
        if isinstance(thresholds, (int, float)):
            if num_layers is None:
                raise ValueError("a scalar threshold needs num_layers (the model's layer count)")
            init = torch.full((num_layers,), float(thresholds))
        else:
            init = torch.as_tensor(thresholds, dtype=torch.float32).clone().reshape(-1)
            if num_layers is not None and init.numel() != num_layers:
                raise ValueError(f"{init.numel()} thresholds given for num_layers={num_layers}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.thresholds = nn.Parameter(init)
        self.temperature = temperature
        self.min_keep = min_keep
        self.soft = soft

    @classmethod
    def from_spec(cls, spec: LtpSpec, approx: nn.Module | None = None) -> LtpReducer:
        return cls(spec.thresholds, spec.num_layers, spec.temperature, spec.min_keep, spec.soft)

    def spec(self) -> LtpSpec:
        return LtpSpec(
            thresholds=tuple(float(v) for v in self.thresholds.detach().cpu()),
            temperature=self.temperature,
            min_keep=self.min_keep,
            soft=self.soft,
        )

    def run(
        self,
        parts: ModelParts,
        inputs: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        pad_mask: torch.Tensor,
        mode: Mode = "remove",
    ) -> ForwardResult:
        return self._forward(parts, x, pad_mask, mode)

    def _check(self, parts: ModelParts) -> None:
        if self.thresholds.shape != (len(parts.layers),):
            raise ValueError(
                f"LtpReducer has {self.thresholds.numel()} thresholds, the model has {len(parts.layers)} layers"
            )

    def _forward(
        self,
        parts: ModelParts,
        x: torch.Tensor,
        pad_mask: torch.Tensor,
        mode: Mode,
        calibrate_to: Sequence[float] | None = None,
    ) -> ForwardResult:
        if mode not in ("remove", "mask"):
            raise ValueError(f"mode must be 'remove' or 'mask', got {mode!r}")
        self._check(parts)
        soft = mode == "mask" and (self.training if self.soft is None else self.soft)
        num_prefix, total_real = parts.num_prefix_tokens, pad_mask.sum()

        def step(layer_idx: int, state: TokenState, out: BlockOutput) -> TokenState:
            live = state.valid.to(x.dtype) if state.weight is None else state.weight * state.valid
            assert out.attn is not None  # online_forward(need_attn=True)
            importance = token_importance(out.attn, live)  # (B, K)
            if calibrate_to is not None:  # choose θ_l on this batch before applying it
                forced = forced_mask(importance, state.valid, num_prefix, self.min_keep)
                target = round(calibrate_to[layer_idx] * int(total_real)) - int(forced.sum())
                theta = quantile_threshold(importance, state.valid & ~forced, target)
                self.thresholds.data[layer_idx] = theta.to(self.thresholds.dtype)
            theta = self.thresholds[layer_idx].to(x.dtype)
            if soft:
                m = soft_keep_mask(
                    importance, state.valid, theta, self.temperature, num_prefix, self.min_keep
                )
                weight = m if state.weight is None else state.weight * m
                return TokenState(state.hidden, state.valid, state.pos, state.size, weight)
            keep = threshold_keep_mask(importance, state.valid, theta, num_prefix, self.min_keep)  # (B, K)
            if mode == "mask":  # hard mask: full shapes, dropped slots invalid with key weight 0
                weight = keep.to(x.dtype) if state.weight is None else state.weight * keep
                return TokenState(state.hidden, keep, state.pos, state.size, weight)
            keep_idx, valid = compact_indices(keep, compact_size(keep))  # data-dependent count: host sync
            return TokenState(
                batched_gather(state.hidden, keep_idx),
                valid,
                batched_gather(state.pos, keep_idx),
                batched_gather(state.size, keep_idx),
            )

        return online_forward(parts, x, pad_mask, step, need_attn=True)

    @torch.no_grad()
    def calibrate(
        self, parts: ModelParts, inputs: Mapping[str, torch.Tensor], keep_ratio: float | Sequence[float]
    ) -> torch.Tensor:
        """Set θ so that, on this batch, ``keep_ratio[l]`` of all real tokens enter layer l+1.

        Layer by layer in one pruned pass: θ_l is the importance quantile (pooled over the
        batch, among tokens not forced) that keeps the target count, given the pruning
        already chosen for layers < l. Re-running the same batch reproduces the targets to
        within rounding (half a token over the batch) unless the floors exceed them; other
        batches get the same thresholds and therefore data-dependent counts (the LTP idea).
        Returns the thresholds (L,).
        """
        ratios = ratio_schedule(keep_ratio, len(parts.layers))
        x, pad_mask = embed(parts, inputs)
        self._forward(parts, x, pad_mask, "remove", calibrate_to=ratios)
        return self.thresholds.detach().clone()
