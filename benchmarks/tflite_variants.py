"""How benchmarks/tflite_slots.py builds a file other than the exporter would: an XNNPACK removal
undone (to time what it gains), or an INT8 file whose kept-count check is reported, not enforced
(a float16 ApproxNet, to measure what it changes). Patches, so the export path stays the CLI's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal, TypeAlias
from unittest import mock

from sttabt_edge.export.tflite_graph import ApproxWeights

Undone: TypeAlias = Literal["fc", "gathernd"]  # one-head products as FULLY_CONNECTED; per-element GATHER_ND


@contextlib.contextmanager
def kept_check_reported(approx_weights: ApproxWeights) -> Iterator[None]:
    """A float16 ApproxNet's INT8 file is written even where its kept counts leave PyTorch's (the
    exporter refuses it): its report, kept_counts_equal included, goes to the record."""
    if approx_weights != "float16":
        yield
        return
    import sttabt_edge.export.tflite as tfl

    check = tfl._check

    def reported(got: Any, ref: Any, path: Any, atol: float | None, *rest: Any) -> Any:
        return tfl.compare(got, ref) if atol is None else check(got, ref, path, atol, *rest)

    with mock.patch.object(tfl, "_check", reported):
        yield


@contextlib.contextmanager
def undone(variant: Undone | None) -> Iterator[None]:
    """Build a file without one XNNPACK removal, to time what the removal gains."""
    if variant is None:
        yield
        return
    if variant == "fc":  # one-head Q·Kᵀ left as FULLY_CONNECTED on a computed weight (not delegated)
        import sttabt_edge.export.tflite as tfl
        from sttabt_edge.export.tflite_graph import convert

        with mock.patch.object(tfl, "convert", lambda m, s: convert(m, s, delegable=False)):
            yield
        return
    import torch

    import sttabt_edge.method.sparse as sparse

    def per_element(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # the general gather at batch 1
        return torch.gather(x, 1, idx[..., None].expand(-1, -1, *x.shape[2:]))

    with mock.patch.object(sparse, "batched_gather", per_element):
        yield
