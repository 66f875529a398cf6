"""Token reducers: STTABT and the baselines share one interface (:class:`Reducer`)."""

from sttabt_edge.reducers.base import Reducer
from sttabt_edge.reducers.dense import DenseReducer
from sttabt_edge.reducers.sttabt import SttabtReducer

__all__ = ["DenseReducer", "Reducer", "SttabtReducer"]
