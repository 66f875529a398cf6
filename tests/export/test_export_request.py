"""The export request (#27): frozen groups by concern, one check before the model loads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from sttabt_edge.errors import InputError
from sttabt_edge.export.request import (
    ExportRequest,
    GraphOptions,
    ModelSource,
    QuantizeOptions,
    VerifyOptions,
    check_request,
)
from sttabt_edge.reducers.spec import DenseSpec


def _req(**groups) -> ExportRequest:
    return ExportRequest(source=ModelSource("m"), out=Path("x.onnx"), reducer=DenseSpec(), **groups)


def test_groups_are_frozen_with_the_cli_defaults():
    req = _req()
    assert req.graph == GraphOptions("onnx", 128, None, 0.95, "dynamic", 17, False, True, False)
    assert req.quantize == QuantizeOptions(None, "float32")
    assert req.verify == VerifyOptions(None, 16, 20, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.graph.target = "tflite"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.out = Path("y.onnx")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("groups", "match"),
    [
        ({"graph": GraphOptions(target="tflite")}, "a tflite export is a .tflite file"),
        ({"quantize": QuantizeOptions(mode="int4")}, "--quantize must be one of"),  # type: ignore[arg-type]
        ({"verify": VerifyOptions(calib_samples=0)}, "--calib-samples must be >= 1"),
        ({"verify": VerifyOptions(calib=Path("/no/such/calib"))}, "no such file"),
        ({"graph": GraphOptions(slots="bound")}, "--slots bound applies to --target tflite"),
        ({"graph": GraphOptions(slot_quantile=0.0)}, "slot quantile must be in"),
    ],
)
def test_check_request_refuses_before_the_load(groups, match):
    with pytest.raises(InputError, match=match):
        check_request(_req(**groups))


@pytest.mark.parametrize(
    ("graph", "quantize", "match"),
    [
        (GraphOptions(target="tflite", fuse=True), QuantizeOptions(), "--fuse is ONNX-only"),
        (GraphOptions(target="tflite", batch=2), QuantizeOptions(), "static batch of 1"),
        (GraphOptions(target="tflite"), QuantizeOptions(mode="int8-static"), "int8-static is ONNX-only"),
    ],
)
def test_tflite_combinations(graph, quantize, match):
    req = dataclasses.replace(_req(graph=graph, quantize=quantize), out=Path("x.tflite"))
    with pytest.raises(InputError, match=match):
        check_request(req)


def test_a_loaded_approxnet_needs_its_dir_and_a_plain_model_a_spec():
    loaded = ModelSource("m", approx_net=torch.nn.Linear(1, 1))
    with pytest.raises(InputError, match="needs the dir it was loaded from"):
        check_request(dataclasses.replace(_req(), source=loaded))
    with pytest.raises(InputError, match="needs a reducer spec"):
        check_request(dataclasses.replace(_req(), reducer=None))
    check_request(_req())  # a plain, complete request passes
