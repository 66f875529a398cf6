"""Defaults shared by the CLI, the exporter and the visualiser, in one torch-free place.

Keep ratios mean different things per method. For STTABT (union back-tracking) r is the top-k
fraction each layer adds to the next layer's set, so the retention is well above r: on the
shared models r = 0.15 keeps about 0.3 of DeiT-Tiny's tokens with its own attention
(benchmarks/core_deit.py) and about half of SST-2's. For EViT top-k and ToMe it is the
fraction kept at each pruning step.
"""

from __future__ import annotations

KEEP_RATIO_DEFAULTS = {"sttabt": 0.15, "topk": 0.5, "tome": 0.5}


def default_keep_ratio(method: str) -> float:
    """The keep ratio a command uses for ``method`` when none is given."""
    return KEEP_RATIO_DEFAULTS.get(method, 0.5)
