"""Run an HF classifier under a token reducer: a module wrapper and an undoable patch.

handle = sttabt_edge.patch(model, SttabtReducer(keep_ratio=0.3))
out = model(pixel_values=x)   # out.logits, out.retention, out.n_in ...
handle.remove()               # the model is exactly as before
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from sttabt_edge.compat import ModelParts, model_parts
from sttabt_edge.method.sparse import ForwardResult, Mode
from sttabt_edge.models.adapter import classify, embed
from sttabt_edge.reducers.base import Reducer


@dataclass
class SparseOutput:
    logits: torch.Tensor  # (B, num_labels)
    n_in: torch.Tensor  # (B, L) real tokens entering each layer
    n_out: torch.Tensor  # (B, L) query rows computed per layer
    retention: torch.Tensor  # (B, L) n_in / real length
    keep: list[torch.Tensor] | None  # L+1 masks (B, N) over original positions
    pad_mask: torch.Tensor  # (B, N)


def sparse_forward(
    parts: ModelParts, reducer: Reducer, inputs: Mapping[str, torch.Tensor], mode: str = "remove"
) -> SparseOutput:
    """Embed, run the reducer's layer loop, classify."""
    x, pad = embed(parts, inputs)
    # mode stays a str here (the public signature): each reducer's run checks it (ValueError)
    res: ForwardResult = reducer.run(parts, inputs, x, pad, cast(Mode, mode))
    n_real = pad.sum(dim=1, keepdim=True).to(torch.float32)
    return SparseOutput(
        classify(parts, res.prefix_hidden),
        res.n_in,
        res.n_out,
        res.n_in.to(torch.float32) / n_real,
        res.keep,
        pad,
    )


class SparseClassifier(nn.Module):
    """A classifier plus a reducer: the one unit the trainer trains, evaluation and verification run
    and the exporter traces (its ``parts`` are found once, here)."""

    def __init__(
        self, model: nn.Module, reducer: Reducer, mode: str = "remove", parts: ModelParts | None = None
    ):
        super().__init__()
        self.model = model
        self.reducer = reducer
        self.mode = mode
        self.parts = model_parts(model) if parts is None else parts

    def forward(self, **inputs: torch.Tensor) -> SparseOutput:
        return sparse_forward(self.parts, self.reducer, inputs, self.mode)

    def with_reducer(self, reducer: Reducer) -> SparseClassifier:
        """The same model (shared, parts reused) under another reducer, e.g. a reference one."""
        return SparseClassifier(self.model, reducer, self.mode, self.parts)


@torch.no_grad()
def mean_retention(model: nn.Module, reducer: Reducer, inputs: Mapping[str, torch.Tensor]) -> float:
    """Mean fraction of tokens entering the layers, over layers and samples, in eval mode."""
    return float(SparseClassifier(model, reducer).eval()(**inputs).retention.mean())


class PatchHandle:
    """Undo token for :func:`patch`."""

    def __init__(self, model: nn.Module, had_forward: bool, old_forward: object):
        self.model = model
        self._had_forward = had_forward
        self._old_forward = old_forward

    def remove(self) -> None:
        """Restore the model's own forward."""
        if self._had_forward:
            assert callable(self._old_forward)  # the instance's own forward, which patch() replaced
            self.model.forward = self._old_forward
        else:
            self.model.__dict__.pop("forward", None)

    def __enter__(self) -> PatchHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def patch(model: nn.Module, reducer: Reducer, mode: str = "remove") -> PatchHandle:
    """Make ``model(**inputs)`` run under ``reducer``; ``handle.remove()`` undoes it.

    Only this instance is changed (an instance attribute shadows the class forward); the
    reducer is not registered as a submodule, so the model's state_dict is unchanged.
    """
    parts = model_parts(model)
    had = "forward" in model.__dict__
    old = model.__dict__.get("forward")

    def forward(self: nn.Module, **inputs: torch.Tensor) -> SparseOutput:
        return sparse_forward(parts, reducer, inputs, mode)

    model.forward = types.MethodType(forward, model)
    return PatchHandle(model, had, old)
