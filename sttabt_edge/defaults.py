"""Defaults shared by the CLI, the exporter and the visualiser, in one torch-free place.

Keep ratios mean different things per method. For STTABT (union back-tracking) r is the top-k
fraction each layer adds to the next layer's set, so the retention is well above r: on the
shared models r = 0.15 keeps about 0.3 of DeiT-Tiny's tokens with its own attention
(benchmarks/core_deit.py) and about half of SST-2's. For EViT top-k and ToMe it is the
fraction kept at each pruning step.
"""

from __future__ import annotations

KEEP_RATIO_DEFAULTS = {"sttabt": 0.15, "topk": 0.5, "tome": 0.5}

# The ApproxNet every command builds unless told otherwise: widths / 8 and ONE attention head. Measured
# (docs/results.md, ApproxNet options): on MiniLM-SST2 it is the cheapest option (0.44x of dense latency
# against 0.57x for /4 with all heads, DeiT-Tiny, same keep ratio), and distilled it chooses tokens
# as well at retention 0.5 (SST-2 dev 84.1% vs 82.6% for a /4 with all heads, union back-tracking)
# though not at 0.3 (78.7% vs 81.5%): pass --factor 4 --heads 0 (all) for aggressive retention.
APPROX_FACTOR = 8
APPROX_HEADS = 1


def default_keep_ratio(method: str) -> float:
    """The keep ratio a command uses for ``method`` when none is given."""
    return KEEP_RATIO_DEFAULTS.get(method, 0.5)
