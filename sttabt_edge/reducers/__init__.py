"""Token reducers: STTABT and the baselines share one interface (:class:`Reducer`), one typed
config per kind (:mod:`~sttabt_edge.reducers.spec`) and one factory (:func:`build`)."""

from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.dense import DenseReducer
from sttabt_edge.reducers.factory import build, make_reducer
from sttabt_edge.reducers.ltp import LtpReducer
from sttabt_edge.reducers.spec import (
    DenseSpec,
    LtpSpec,
    ReducerSpec,
    SttabtSpec,
    TomeSpec,
    TopkSpec,
    make_spec,
    spec_from_metadata,
)
from sttabt_edge.reducers.sttabt import SttabtReducer
from sttabt_edge.reducers.tome import TomeReducer
from sttabt_edge.reducers.topk import TopkReducer

__all__ = [
    "DenseReducer",
    "Reducer",
    "SttabtReducer",
    "TopkReducer",
    "LtpReducer",
    "TomeReducer",
    "build",
    "make_reducer",
    "ReducerSpec",
    "DenseSpec",
    "SttabtSpec",
    "TopkSpec",
    "LtpSpec",
    "TomeSpec",
    "make_spec",
    "spec_from_metadata",
]
