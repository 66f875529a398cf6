"""Typed reducer specs: JSON round trips for every kind, the one factory, the export/trained formats."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import text_batch, tiny_bert

from sttabt_edge.export.metadata import reducer_spec, sttabt_settings
from sttabt_edge.method.approxnet import build_approxnet
from sttabt_edge.method.flops import backtrack_flops
from sttabt_edge.reducers import (
    DenseSpec,
    LtpReducer,
    LtpSpec,
    SttabtReducer,
    SttabtSpec,
    TomeSpec,
    TopkSpec,
    build,
    make_reducer,
    make_spec,
    spec_from_metadata,
)
from sttabt_edge.reducers.spec import SPECS, ReducerOptions, exportable_kinds, spec_from_options
from sttabt_edge.sparse_model import SparseClassifier
from sttabt_edge.train.artifacts import build_reducer, reducer_meta

EXAMPLES = [
    DenseSpec(),
    SttabtSpec(keep_ratio=0.3),
    SttabtSpec(keep_ratio=[0.5, 0.4, 0.3], nesting="count", min_keep=1, head_reduce="max", p=0.0),
    SttabtSpec(thresholds=[0.25, -0.5, 1.0], temperature=0.5, min_keep=2),
    SttabtSpec(thresholds=[0.0, 0.5, -1.0], concrete="official", temperature=0.1),
    TopkSpec(keep_ratio=0.5),
    TopkSpec(keep_ratio=[0.7, 0.49, 0.343], prune_layers=[0, 1, 2]),
    LtpSpec(thresholds=0.5, num_layers=3),
    LtpSpec(thresholds=[0.25, 0.5, 0.75], temperature=0.2, min_keep=2, soft=False),
    TomeSpec(r=2),
    TomeSpec(keep_ratio=[0.9, 0.8, 0.7]),
]


@pytest.mark.parametrize("spec", EXAMPLES, ids=repr)
def test_metadata_round_trip(spec):
    meta = spec.to_metadata()
    assert json.loads(json.dumps(meta)) == meta  # plain JSON
    assert spec_from_metadata(json.loads(json.dumps(meta))) == spec
    assert type(spec).from_metadata(meta) == spec


def test_every_kind_has_an_example_and_a_reducer():
    assert {s.kind for s in EXAMPLES} == set(SPECS)
    for spec in EXAMPLES:
        reducer = build(spec, None)
        assert reducer.name == spec.kind
        # a reducer's own spec builds an equal reducer (float32 logits already rounded once)
        assert build(reducer.spec()).spec() == reducer.spec()


def test_reducer_spec_is_exact_for_representable_values():
    spec = SttabtSpec(thresholds=[0.25, -0.5, 1.0], concrete="official", temperature=0.1, min_keep=2)
    assert build(spec).spec() == spec
    assert build(TopkSpec(keep_ratio=[0.5, 0.25], prune_layers=[1])).spec() == TopkSpec((0.5, 0.25), (1,))


def test_validation():
    with pytest.raises(ValueError, match="exactly one"):
        SttabtSpec()
    with pytest.raises(ValueError, match="exactly one"):
        SttabtSpec(keep_ratio=0.5, thresholds=[0.0])
    with pytest.raises(ValueError, match="nesting"):
        SttabtSpec(keep_ratio=0.5, nesting="intersection")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="head_reduce"):
        SttabtSpec(keep_ratio=0.5, head_reduce="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_keep"):
        SttabtSpec(keep_ratio=0.5, min_keep=0)
    with pytest.raises(ValueError, match="exactly one"):
        TomeSpec()
    with pytest.raises(ValueError, match="unknown reducer"):
        make_spec("evit")
    with pytest.raises(TypeError, match="bad arguments"):
        make_spec("topk", r=3)
    with pytest.raises(TypeError, match="only sttabt"):
        build(TopkSpec(), torch.nn.Identity())
    with pytest.raises(ValueError, match="reads 'topk'"):
        TopkSpec.from_metadata({"name": "tome"})


def test_command_options_become_a_spec_once():
    """Each kind takes the options it has; a keep ratio left out is the kind's default."""
    opts = ReducerOptions(keep_ratio=0.4, nesting="count", min_keep=2, num_layers=3)
    assert spec_from_options("sttabt", opts) == SttabtSpec(keep_ratio=0.4, nesting="count", min_keep=2)
    assert spec_from_options("topk", opts) == TopkSpec(keep_ratio=0.4)
    assert spec_from_options("tome", opts) == TomeSpec(keep_ratio=0.4)
    assert spec_from_options("ltp", opts) == LtpSpec(num_layers=3)
    assert spec_from_options("dense", opts) == DenseSpec()
    assert spec_from_options("sttabt", ReducerOptions()) == SttabtSpec(keep_ratio=0.15)
    assert spec_from_options("tome", ReducerOptions()) == TomeSpec(keep_ratio=0.5)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            spec_from_options("topk", ReducerOptions(keep_ratio=bad))


def test_capabilities():
    assert exportable_kinds("onnx") == ("dense", "sttabt", "topk", "ltp", "tome")
    assert exportable_kinds("tflite") == ("dense", "sttabt")
    assert LtpSpec().exportable("onnx") and not LtpSpec().exportable("tflite")
    assert SttabtSpec(keep_ratio=0.5).keep_schedule(3) == [0.5, 0.5, 0.5]
    assert LtpSpec().keep_schedule(3) is None


def test_make_reducer_goes_through_the_spec():
    reducer = make_reducer("sttabt", keep_ratio=[0.5, 0.4], nesting="count", min_keep=2)
    assert isinstance(reducer, SttabtReducer)
    assert reducer.spec() == SttabtSpec(keep_ratio=(0.5, 0.4), nesting="count", min_keep=2)


def test_export_metadata_round_trip():
    """The export's 'sttabt' block and keep_schedule/thresholds rebuild the same spec."""
    for spec in (
        SttabtSpec(keep_ratio=[0.5, 0.4, 0.3], nesting="count", min_keep=2),
        SttabtSpec(thresholds=[0.25, -0.5, 1.0], concrete="official", temperature=0.1, min_keep=3),
    ):
        meta = {
            "method": "sttabt",
            "keep_schedule": spec.keep_schedule(3),
            "thresholds": None if spec.thresholds is None else list(spec.thresholds),
            "sttabt": sttabt_settings(spec),
        }
        assert reducer_spec(json.loads(json.dumps(meta))) == spec
    assert reducer_spec({"method": "dense"}) == DenseSpec()
    assert reducer_spec({"method": "topk", "keep_schedule": [0.5, 0.5]}) == TopkSpec(keep_ratio=(0.5, 0.5))


def test_export_metadata_without_sttabt_block_is_the_legacy_rule():
    """Files from before the "sttabt" key: count nesting, floor 1; thresholds at temperature 0.5."""
    old = reducer_spec({"method": "sttabt", "keep_schedule": [0.5, 0.5], "thresholds": None})
    assert old == SttabtSpec(keep_ratio=(0.5, 0.5), nesting="count", min_keep=1)
    old = reducer_spec({"method": "sttabt", "keep_schedule": None, "thresholds": [0.0, 0.5]})
    assert old == SttabtSpec(thresholds=(0.0, 0.5), temperature=0.5, nesting="count", min_keep=1)


def test_trained_dir_reducer_format():
    """sttabt.json's "reducer": the spec's metadata; files written before the spec still load."""
    legacy = {
        "name": "sttabt",
        "thresholds": [0.25, -0.5],
        "temperature": 0.5,
        "min_keep": 4,
        "p": 0.1,
        "head_reduce": "mean",
        "approx": "approxnet",
    }  # no "concrete": the straight-through variant
    reducer = build_reducer(legacy, None)
    assert reducer.spec() == SttabtSpec(thresholds=(0.25, -0.5), temperature=0.5)
    assert not reducer.training
    assert reducer_meta(reducer) == {**reducer.spec().to_metadata(), "approx": "approxnet"}
    ltp = build_reducer({"name": "ltp", "thresholds": [0.5, 0.25], "temperature": 0.1, "min_keep": 1}, None)
    assert isinstance(ltp, LtpReducer) and ltp.soft is False
    topk = build_reducer({"name": "topk", "keep_ratio": 0.5, "prune_layers": None}, None)
    assert topk.spec() == TopkSpec(keep_ratio=0.5)
    with pytest.raises(ValueError, match="cannot save"):
        reducer_meta(build(TomeSpec(r=1)))


def test_decision_flops_are_the_back_tracking_cost():
    model = tiny_bert().eval()
    inputs = text_batch()
    approx = build_approxnet(model, 2, "interpolate").eval()
    for reducer in (SttabtReducer(keep_ratio=0.5), SttabtReducer(approx, keep_ratio=0.5)):
        clf = SparseClassifier(model, reducer)
        with torch.no_grad():
            out = clf(**inputs)
        heads = clf.parts.num_heads if reducer.approx is None else approx.heads
        n_real = out.pad_mask.sum(1).double()
        expect = backtrack_flops(len(clf.parts.layers), heads, n_real)
        assert torch.equal(reducer.decision_flops(clf.parts, out.pad_mask), expect)
    assert build(TopkSpec()).decision_flops(clf.parts, out.pad_mask) is None
