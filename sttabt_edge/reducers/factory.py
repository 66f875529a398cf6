"""Build a reducer by name (CLI flags, configs, benchmark sweeps)."""

from __future__ import annotations

from typing import Any

from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.dense import DenseReducer
from sttabt_edge.reducers.ltp import LtpReducer
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


def make_reducer(name: str, **kwargs: Any) -> Reducer:
    """``make_reducer("topk", keep_ratio=0.5)``; kwargs go to the reducer's constructor.

    sttabt: approx=None (self-attention oracle) or an ApproxNet, keep_ratio= or thresholds=,
    p, head_reduce. topk: keep_ratio, prune_layers. ltp: thresholds, num_layers, temperature,
    min_keep, soft. tome: r= or keep_ratio=. dense: none.
    """
    try:
        cls = REDUCERS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown reducer {name!r}; choose one of {', '.join(REDUCERS)}") from None
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"bad arguments for reducer {name!r}: {err}") from err
