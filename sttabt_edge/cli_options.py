"""Option types that several commands share (eval, export, show): one definition, one help text."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

KEEP_RATIO_HELP = (
    "keep ratio (default per method: sttabt 0.15, topk / tome 0.5). sttabt: the top-k fraction each layer "
    "adds to the next layer's set (union), so retention is higher; see sttabt_edge/defaults.py"
)


class Nesting(Enum):  # not a str Enum: its member `count` would shadow str.count
    union = "union"
    count = "count"


NestingOpt = Annotated[
    Nesting,
    typer.Option(
        help="back-tracking nesting: union (official: topk ∪ next layer's set) | count (earlier rule, for comparison)"
    ),
]
MinKeepOpt = Annotated[int, typer.Option(min=1, help="tokens every layer keeps at least, CLS included")]
ORACLE = "the model's own attention: an upper bound, not deployable"
NoVerifyDigest = Annotated[
    bool,
    typer.Option(
        "--no-verify-digest",
        help="load a model whose graph and weights do not match the digest recorded at export "
        "(or files exported before digests)",
    ),
]
