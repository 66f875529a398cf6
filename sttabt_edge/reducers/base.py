"""The token-reducer interface shared by STTABT and the baselines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from sttabt_edge.compat import ModelParts
from sttabt_edge.method.sparse import ForwardResult, Mode
from sttabt_edge.reducers.spec import ReducerSpec


class Reducer(nn.Module):
    """Decides which tokens each layer of the main model computes.

    ``run`` receives the embedded tokens and returns the final prefix hidden states plus
    per-layer token counts. ``mode`` is "remove" (real removal, inference) or "mask"
    (full shapes, differentiable, for training).
    """

    name: str = "base"
    takes_approx: ClassVar[bool] = False  # whether build() may pass an attention source (STTABT's ApproxNet)

    @classmethod
    def from_spec(cls, spec: Any, approx: nn.Module | None = None) -> Reducer:
        """The reducer ``spec`` describes (a spec of this class's kind, ``REDUCERS[spec.kind]``)."""
        raise NotImplementedError(f"{cls.__name__} has no from_spec")

    def run(
        self,
        parts: ModelParts,
        inputs: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        pad_mask: torch.Tensor,
        mode: Mode = "remove",
    ) -> ForwardResult:
        raise NotImplementedError

    def spec(self) -> ReducerSpec:
        """The reducer's config without its weights: what metadata and trained dirs record, and
        what :func:`sttabt_edge.reducers.factory.build` turns back into an equal reducer."""
        raise NotImplementedError(f"{type(self).__name__} has no spec")

    def extra_flops(self, inputs: Mapping[str, torch.Tensor], pad_mask: torch.Tensor) -> torch.Tensor | None:
        """Per-sample FLOPs the reducer's attention source spends (e.g. ApproxNet), (B,) or None."""
        return None

    def decision_flops(self, parts: ModelParts, pad_mask: torch.Tensor) -> torch.Tensor | None:
        """Per-sample FLOPs of turning that source into keep decisions (STTABT's back-tracking),
        (B,) or None; the reducer reports its own so the FLOPs counter needs no per-method cases."""
        return None
