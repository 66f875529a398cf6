"""Token reducers: STTABT and the baselines share one interface (:class:`Reducer`)."""

from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.dense import DenseReducer
from sttabt_edge.reducers.factory import make_reducer
from sttabt_edge.reducers.ltp import LtpReducer
from sttabt_edge.reducers.sttabt import SttabtReducer
from sttabt_edge.reducers.tome import TomeReducer
from sttabt_edge.reducers.topk import TopkReducer

__all__ = ["DenseReducer", "Reducer", "SttabtReducer", "TopkReducer", "LtpReducer", "TomeReducer", "make_reducer"]
