"""The one reducer factory: a spec (plus an STTABT attention source) -> a reducer.

CLI flags, export requests, export metadata (verify) and trained dirs all reach a reducer
through :func:`build`; :func:`make_reducer` is its by-name form.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.dense import DenseReducer
from sttabt_edge.reducers.ltp import LtpReducer
from sttabt_edge.reducers.spec import (
    SPECS,
    DenseSpec,
    LtpSpec,
    ReducerSpec,
    SttabtSpec,
    TomeSpec,
    TopkSpec,
    make_spec,
)
from sttabt_edge.reducers.sttabt import SttabtReducer
from sttabt_edge.reducers.tome import TomeReducer
from sttabt_edge.reducers.topk import TopkReducer

REDUCERS: dict[str, type[Reducer]] = {
    "dense": DenseReducer,
    "sttabt": SttabtReducer,
    "topk": TopkReducer,
    "ltp": LtpReducer,
    "tome": TomeReducer,
}
assert set(REDUCERS) == set(SPECS), "every spec kind has a reducer"


def build(spec: ReducerSpec, approx: nn.Module | None = None) -> Reducer:
    """The reducer ``spec`` describes; ``approx``: STTABT's ApproxNet (None: the self-attention oracle)."""
    if isinstance(spec, SttabtSpec):
        return SttabtReducer.from_spec(spec, approx)
    if approx is not None:
        raise TypeError(f"bad arguments for reducer {spec.kind!r}: only sttabt takes an ApproxNet (approx=)")
    if isinstance(spec, DenseSpec):
        return DenseReducer.from_spec(spec)
    if isinstance(spec, TopkSpec):
        return TopkReducer.from_spec(spec)
    if isinstance(spec, LtpSpec):
        return LtpReducer.from_spec(spec)
    if isinstance(spec, TomeSpec):
        return TomeReducer.from_spec(spec)
    raise TypeError(f"no reducer for spec {type(spec).__name__}")


def make_reducer(name: str, approx: nn.Module | None = None, **options: Any) -> Reducer:
    """``make_reducer("topk", keep_ratio=0.5)`` = ``build(make_spec("topk", keep_ratio=0.5))``.

    sttabt: approx=None (self-attention oracle) or an ApproxNet, keep_ratio= or thresholds=
    (logits), p, head_reduce, nesting, min_keep. topk: keep_ratio, prune_layers. ltp:
    thresholds, num_layers, temperature, min_keep, soft. tome: r= or keep_ratio=. dense: none.
    """
    return build(make_spec(name, **options), approx)
