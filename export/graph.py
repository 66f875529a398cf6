"""Traceable wrappers: the whole STTABT pipeline as one module, plus its stages for profiling.

:class:`ExportModule` of a :class:`~sttabt_edge.sparse_model.SparseClassifier` is what goes into
the ONNX file: embedding → reducer (for STTABT: ApproxNet → back-tracking → sparse layer loop
with real removal) → head. It only calls
the library (:func:`sttabt_edge.sparse_model.sparse_forward`), so the exported graph is
the eager algorithm, not a re-implementation. Inputs are positional tensors in the
contract's order (docs/onnx_contract.md); outputs are ``(logits, kept_counts)``.

The stage modules (:class:`ApproxStage`, :class:`MaskStage`, :class:`SparseStage`) cut the
same computation into three graphs so their latency can be measured one by one.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sttabt_edge.compat import ModelParts
from sttabt_edge.errors import ExportError
from sttabt_edge.method.backtrack import Backtrack, topk_plan
from sttabt_edge.method.sparse import plan_forward
from sttabt_edge.method.tokens import Size
from sttabt_edge.models.adapter import classify, embed
from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.spec import exportable_kinds
from sttabt_edge.reducers.sttabt import AttentionSource, SttabtReducer
from sttabt_edge.runtime.contract import FAMILY_IO, FamilyIO
from sttabt_edge.runtime.contract import OUTPUT_NAMES as OUTPUT_NAMES
from sttabt_edge.sparse_model import SparseClassifier, sparse_forward

# Reducers whose token counts follow from shapes and per-sample lengths inside the graph.
EXPORTABLE = exportable_kinds("onnx")
DTYPES = {"float32": torch.float32, "int64": torch.long}


def family_io(family: str) -> FamilyIO:
    """The family's I/O description (the runtime's contract owns it)."""
    if family not in FAMILY_IO:
        raise ExportError(f"no I/O description for model family {family!r}; known: {', '.join(FAMILY_IO)}")
    return FAMILY_IO[family]


def input_names(family: str) -> tuple[str, ...]:
    return family_io(family).input_names


def check_exportable(parts: ModelParts, reducer: Reducer) -> None:
    """Refuse what the graph cannot represent faithfully, with the reason."""
    name = getattr(reducer, "name", type(reducer).__name__)
    if name not in EXPORTABLE:
        raise ExportError(f"method {name!r} is not exportable; exportable methods: {', '.join(EXPORTABLE)}")
    if isinstance(reducer, SttabtReducer) and reducer.approx is None:
        raise ExportError(
            "STTABT without an ApproxNet (the self-attention oracle) is not exportable: it runs the dense "
            "model first, so the graph would be slower than dense. Pass an ApproxNet (--approx DIR)."
        )
    if name == "tome" and family_io(parts.family).variable_length:
        raise ExportError(
            f"{name} export is for fixed-size (ViT) inputs only: its per-layer schedule is computed from N "
            "in Python and would be frozen at the example length for text"
        )


def as_inputs(family: str, tensors: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """Positional graph inputs -> the library's input mapping."""
    names = input_names(family)
    if len(tensors) != len(names):
        raise ExportError(f"{family} graph takes {len(names)} inputs {names}, got {len(tensors)}")
    return dict(zip(names, tensors, strict=True))


def example_args(family: str, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The library's input mapping -> positional graph inputs in the contract's order and dtypes; an
    input the mapping lacks takes its fill value (text: an all-real mask, type 0), shaped like the first."""
    io = family_io(family)
    first = inputs[io.inputs[0].name].to(DTYPES[io.inputs[0].dtype])
    args = [first]
    for t in io.inputs[1:]:
        given = inputs.get(t.name)
        if given is not None:
            args.append(given.to(DTYPES[t.dtype]))
        elif t.fill is not None:
            args.append(torch.full_like(first, t.fill))
        else:
            raise ExportError(f"{family} inputs lack {t.name!r}")
    return tuple(args)


class ExportModule(nn.Module):
    """SparseClassifier -> forward(*inputs) = (logits (B, K) float, kept_counts (B, L) int64).

    Always real removal (the graph's point), whatever ``sc.mode``. The model and reducer are held
    under their own names so the graph's weight names are those of (model, reducer).
    """

    def __init__(self, sc: SparseClassifier):
        super().__init__()
        self.model = sc.model
        self.reducer = sc.reducer
        self.parts = sc.parts
        check_exportable(self.parts, sc.reducer)

    @property
    def input_names(self) -> tuple[str, ...]:
        return input_names(self.parts.family)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = sparse_forward(self.parts, self.reducer, as_inputs(self.parts.family, inputs))
        return out.logits, out.n_in.long()  # n_in: real tokens entering each layer, (B, L)


# ---- stages, for the latency breakdown ---------------------------------------------------------


def _sttabt(reducer: Reducer) -> SttabtReducer:
    if not isinstance(reducer, SttabtReducer) or reducer.approx is None:
        raise ExportError("the stage breakdown needs an STTABT reducer with an ApproxNet")
    return reducer


class ApproxStage(nn.Module):
    """forward(*inputs) -> ApproxNet's back-tracking maps: L tensors (B, H, R, N)."""

    def __init__(self, sc: SparseClassifier):
        super().__init__()
        approx = _sttabt(sc.reducer).approx
        assert approx is not None  # _sttabt refuses a reducer without an ApproxNet
        self.approx: AttentionSource = approx
        self.family = sc.parts.family

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.approx.attentions(as_inputs(self.family, inputs)))


class MaskStage(nn.Module):
    """forward(*maps (B, H, R, N), attention_mask (B, N)) -> keep masks (L+1, B, N) bool."""

    def __init__(self, sc: SparseClassifier):
        super().__init__()
        self.reducer = _sttabt(sc.reducer)
        self.num_prefix = sc.parts.num_prefix_tokens

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        *maps, attention_mask = args
        bt = self.reducer.backtrack_maps(maps, attention_mask.bool(), self.num_prefix)
        return torch.stack([k.bool() for k in bt.keep])


class SparseStage(nn.Module):
    """forward(*inputs, keep (L+1, B, N) bool) -> (logits, kept_counts): the main model under a plan."""

    def __init__(self, sc: SparseClassifier):
        super().__init__()
        self.model = sc.model
        self.reducer = _sttabt(sc.reducer)
        self.parts = sc.parts

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *inputs, keep = args
        x, pad = embed(self.parts, as_inputs(self.parts.family, tuple(inputs)))  # (B, N, C), (B, N)
        r = self.reducer
        sizes: list[Size] | None = None
        same = None
        if r.keep_ratio is not None:  # static bounds from the shape, as topk_backtrack makes them
            n_layers, n_prefix = len(self.parts.layers), self.parts.num_prefix_tokens
            _, sizes, same = topk_plan(r.keep_ratio, n_layers, x.shape[1], n_prefix, r.nesting, r.min_keep)
        plan = r.keep_plan(self.parts, Backtrack(list(keep.unbind(0)), sizes, [], same))
        res = plan_forward(self.parts, x, pad, plan)
        return classify(self.parts, res.prefix_hidden), res.n_in.long()
