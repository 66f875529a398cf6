"""The one reducer factory: a spec (plus an STTABT attention source) -> a reducer.

CLI flags, export requests, export metadata (verify) and trained dirs all reach a reducer
through :func:`build`, which looks the class up in :data:`REDUCERS` by the spec's kind: the one
dispatch (``tests/architecture/test_reducer_dispatch.py``). :func:`make_reducer` is its by-name form.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.dense import DenseReducer
from sttabt_edge.reducers.ltp import LtpReducer
from sttabt_edge.reducers.spec import SPECS, ReducerSpec, make_spec
from sttabt_edge.reducers.sttabt import SttabtReducer
from sttabt_edge.reducers.tome import TomeReducer
from sttabt_edge.reducers.topk import TopkReducer

REDUCERS: dict[str, type[Reducer]] = {
    cls.name: cls for cls in (DenseReducer, SttabtReducer, TopkReducer, LtpReducer, TomeReducer)
}
if set(REDUCERS) != set(SPECS):
    raise ImportError(f"reducer kinds {sorted(REDUCERS)} differ from spec kinds {sorted(SPECS)}")


def build(spec: ReducerSpec, approx: nn.Module | None = None) -> Reducer:
    """The reducer ``spec`` describes; ``approx``: STTABT's ApproxNet (None: the self-attention oracle)."""
    cls = REDUCERS.get(spec.kind)
    if cls is None or not isinstance(spec, SPECS[spec.kind]):
        raise TypeError(f"no reducer for spec {type(spec).__name__}")
    if approx is not None and not cls.takes_approx:
        raise TypeError(f"bad arguments for reducer {spec.kind!r}: only sttabt takes an ApproxNet (approx=)")
    return cls.from_spec(spec, approx)


def takes_approx(spec: ReducerSpec) -> bool:
    """Whether ``spec``'s reducer runs on an attention source (STTABT's ApproxNet), passed to :func:`build`."""
    return REDUCERS[spec.kind].takes_approx


def make_reducer(name: str, approx: nn.Module | None = None, **options: Any) -> Reducer:
    """``make_reducer("topk", keep_ratio=0.5)`` = ``build(make_spec("topk", keep_ratio=0.5))``.

    sttabt: approx=None (self-attention oracle) or an ApproxNet, keep_ratio= or thresholds=
    (logits), p, head_reduce, nesting, min_keep. topk: keep_ratio, prune_layers. ltp:
    thresholds, num_layers, temperature, min_keep, soft. tome: r= or keep_ratio=. dense: none.
    """
    return build(make_spec(name, **options), approx)
