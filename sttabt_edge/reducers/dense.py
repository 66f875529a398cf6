"""The unpruned model as a reducer, for side-by-side comparisons."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sttabt_edge.compat import ModelParts
from sttabt_edge.method.sparse import ForwardResult, Mode, dense_forward
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.spec import DenseSpec


class DenseReducer(Reducer):
    name = "dense"

    @classmethod
    def from_spec(cls, spec: DenseSpec, approx: torch.nn.Module | None = None) -> DenseReducer:
        return cls()

    def spec(self) -> DenseSpec:
        return DenseSpec()

    def run(
        self,
        parts: ModelParts,
        inputs: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        pad_mask: torch.Tensor,
        mode: Mode = "remove",
    ) -> ForwardResult:
        out = dense_forward(parts, x, pad_mask)
        out.keep = [pad_mask] * (len(parts.layers) + 1)
        return out
