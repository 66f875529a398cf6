"""The token-reducer interface shared by STTABT and the baselines."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sttabt_edge.compat import ModelParts
from sttabt_edge.method.sparse import ForwardResult


class Reducer(nn.Module):
    """Decides which tokens each layer of the main model computes.

    ``run`` receives the embedded tokens and returns the final prefix hidden states plus
    per-layer token counts. ``mode`` is "remove" (real removal, inference) or "mask"
    (full shapes, differentiable, for training).
    """

    name: str = "base"

    def run(
        self, parts: ModelParts, inputs: Mapping[str, torch.Tensor], x: torch.Tensor, pad_mask: torch.Tensor,
        mode: str = "remove",
    ) -> ForwardResult:
        raise NotImplementedError

    def extra_flops(self, inputs: Mapping[str, torch.Tensor], pad_mask: torch.Tensor) -> torch.Tensor | None:
        """Per-sample FLOPs the reducer itself spends (e.g. ApproxNet), (B,) or None."""
        return None
