"""Option types that several commands share (eval, export, show): one definition, one help text."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

# Short: the help column is ~45 characters wide in an 80-column terminal; details in docs/cli.md.
KEEP_RATIO_HELP = "per-layer top-k fraction (default: sttabt 0.15, topk / tome 0.5; docs/cli.md)"


class Nesting(Enum):  # not a str Enum: its member `count` would shadow str.count
    union = "union"
    count = "count"


NestingOpt = Annotated[
    Nesting,
    typer.Option(
        help="back-tracking rule: union (official: top-k ∪ next layer's set) | count (the earlier rule)"
    ),
]
MinKeepOpt = Annotated[int, typer.Option(min=1, help="tokens every layer keeps at least, CLS included")]
ORACLE = "the model's own attention: an upper bound, not deployable"
NoVerifyDigest = Annotated[
    bool,
    typer.Option(
        "--no-verify-digest",
        help="skip the digest check of the file (e.g. one exported before digests)",
    ),
]
