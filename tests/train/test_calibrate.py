"""train/calibrate.py: threshold calibration (snap, shape, union init) and the calibration inputs'
length check, through train/concrete.py's names."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from tiny import WORDS, tiny_bert
from trainkit import cfg

from sttabt_edge.data import Example
from sttabt_edge.method.approxnet import build_approxnet
from sttabt_edge.sparse_model import SparseClassifier
from sttabt_edge.train.config import SparseTrainConfig
from sttabt_edge.train.data import prepare_data

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _short_and_long_text(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Four 4-token inputs (SST-2 train phrases) and four 40-token ones (dev sentences)."""
    g = torch.Generator().manual_seed(seed)
    short = torch.randint(5, 100, (4, 4), generator=g)
    long = torch.randint(5, 100, (4, 40), generator=g)
    return (
        {"input_ids": short, "attention_mask": torch.ones_like(short)},
        {"input_ids": long, "attention_mask": torch.ones_like(long)},
    )


def test_snap_flags_targets_below_the_forced_token_floor():
    """A target below the retention the always-kept tokens give on the calibration inputs is reported,
    not silently snapped to +span (which made every such target the same floor-only model: SST-2
    concrete r=0.45 and r=0.3 both gave dev retention 0.220, accuracy 69.4)."""
    from sttabt_edge import compat
    from sttabt_edge.method.concrete import ConcreteThresholds
    from sttabt_edge.reducers.sttabt import SttabtReducer
    from sttabt_edge.train.concrete import UnreachableTargetError, snap_thresholds

    model = tiny_bert()
    parts = compat.model_parts(model)
    reducer = SttabtReducer(build_approxnet(model, 2, "random"), thresholds=ConcreteThresholds(3, min_keep=2))
    short, long = _short_and_long_text()

    def hard_retention(inputs):
        with torch.no_grad():
            return float(SparseClassifier(model, reducer.eval(), mode="mask")(**inputs).retention.mean())

    with torch.no_grad():
        reducer.thresholds.logits.fill_(50.0)
    floor = hard_retention(short)  # only forced tokens: min_keep = 2 = half of a 4-token input
    assert floor == pytest.approx(0.5)
    for target in (0.45, 0.3):
        with pytest.raises(UnreachableTargetError, match="outside what the STTABT thresholds can reach"):
            snap_thresholds(reducer, parts, [short], target)
    with pytest.warns(UserWarning, match="outside what"):
        offset = snap_thresholds(reducer, parts, [short], 0.3, strict=False)
    assert hard_retention(short) == pytest.approx(floor) and offset < 19.0  # the floor, not the span's end
    got = {}
    for target in (0.6, 0.45, 0.3):  # reachable on long inputs: distinct retentions at the targets
        with torch.no_grad():
            reducer.thresholds.logits.zero_()
        snap_thresholds(reducer, parts, [long], target)
        got[target] = hard_retention(long)
    assert all(abs(r - t) < 0.05 for t, r in got.items()) and got[0.6] > got[0.45] > got[0.3]


def test_shape_thresholds_gives_every_layer_the_target():
    """The calibrated init keeps ~target in every layer (one shared offset let the importance
    profile decide: SST-2 r=0.3 started at [1.0, 0.18, 0.15, ...]); the snap after it makes the
    mean exact without undoing the shape."""
    from sttabt_edge import compat
    from sttabt_edge.method.concrete import ConcreteThresholds
    from sttabt_edge.reducers.sttabt import SttabtReducer
    from sttabt_edge.train.concrete import shape_thresholds, snap_thresholds

    model = tiny_bert()
    parts = compat.model_parts(model)
    reducer = SttabtReducer(build_approxnet(model, 2, "random"), thresholds=ConcreteThresholds(3))
    _, long = _short_and_long_text()
    for target in (0.6, 0.3):
        with torch.no_grad():
            reducer.thresholds.logits.zero_()
        noisy = shape_thresholds(reducer, parts, [long], target, noisy=True)
        assert noisy == pytest.approx([target] * 3, abs=0.05)
        snap_thresholds(reducer, parts, [long], target)  # hard retention, as at the hard phase
        with torch.no_grad():
            ret = SparseClassifier(model, reducer.eval(), mode="mask")(**long).retention.mean(0)  # (L,)
        assert float(ret.mean()) == pytest.approx(target, abs=0.02)
        assert ret.tolist() == pytest.approx([target] * 3, abs=0.1)
        assert ret[0] >= ret[1] >= ret[2]  # nested


def test_union_thresholds_grow_toward_the_input():
    """The union init: each layer's own selection keeps one fraction q, so the nested sets grow
    toward the input (the constant schedule gave every layer the top layer's set), mean on target."""
    from sttabt_edge import compat
    from sttabt_edge.method.concrete import ConcreteThresholds
    from sttabt_edge.reducers.sttabt import SttabtReducer
    from sttabt_edge.train.calibrate import _own_fraction_probe, cached_maps, union_thresholds

    model = tiny_bert()
    parts = compat.model_parts(model)
    reducer = SttabtReducer(build_approxnet(model, 2, "random"), thresholds=ConcreteThresholds(3, min_keep=1))
    _, long = _short_and_long_text()
    for target in (0.6, 0.4):
        with torch.no_grad():
            reducer.thresholds.logits.zero_()
        per_layer = union_thresholds(reducer, parts, [long], target)
        assert sum(per_layer) / 3 == pytest.approx(target, abs=0.03)
        assert per_layer[0] > per_layer[1] > per_layer[2]  # grows toward the input, no collapse
        own = _own_fraction_probe(reducer, parts, cached_maps(reducer, parts, [long]))(
            reducer.thresholds.logits.detach()
        )
        # one own fraction for every layer; the snap then shifts every threshold by one offset (to the
        # middle of its retention plateau), which moves the layers' own fractions a little apart
        assert float(own.max() - own.min()) < 0.2


def test_calibration_warns_on_length_shift(text_model_dir, glue_dir):
    from sttabt_edge.train.concrete import calibration_batches

    model = tiny_bert()
    data = prepare_data(glue_dir, model, text_model_dir)
    long_eval = [Example(" ".join(WORDS * 2), 0)] * 8
    data = dataclasses.replace(data, eval=long_eval)
    with pytest.warns(UserWarning, match="calibration inputs average"):
        calibration_batches(data, SparseTrainConfig(calib_samples=8), cfg(max_length=64), torch.device("cpu"))
    like_eval = dataclasses.replace(data, calib=long_eval)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibration_batches(
            like_eval, SparseTrainConfig(calib_samples=8), cfg(max_length=64), torch.device("cpu")
        )
