"""train/concrete.py: concrete threshold training (ours and the official variant) moves retention to the
target and saves a loadable model; an unreachable target is refused before training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny import tiny_bert
from trainkit import cfg, image_data, vit

from sttabt_edge.method.approxnet import build_approxnet
from sttabt_edge.train.artifacts import load_sttabt
from sttabt_edge.train.checkpoint import latest_checkpoint
from sttabt_edge.train.concrete import train_concrete
from sttabt_edge.train.config import SparseTrainConfig, SttabtSettings
from sttabt_edge.train.data import prepare_data

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_concrete_moves_retention_to_target(image_dir, tmp_path):
    model = vit()
    data = image_data(image_dir, model)
    approx = build_approxnet(model, 4, "interpolate")
    scfg = SparseTrainConfig(init="-2", threshold_lr=0.3, hard_frac=0.2)
    train_concrete(model, approx, data, 0.4, cfg(steps=30), scfg=scfg, out=tmp_path / "c")
    logs = [json.loads(ln) for ln in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    ret = [r["retention"] for r in logs if "retention" in r and not r["hard"]]
    assert ret[0] > 0.85 and np.mean(ret[-5:]) < 0.6  # soft phase: from ~1 toward 0.4
    sc = load_sttabt(tmp_path / "c")
    assert sc.mode == "remove"
    with torch.no_grad():
        batch = torch.from_numpy(np.stack(data.source(8, 0, augment=False).get(0)[0]["pixel_values"]))
        out = sc(pixel_values=batch)
    assert abs(float(out.retention.mean()) - 0.4) < 0.12  # the hard model, real removal
    meta = json.loads((tmp_path / "c" / "sttabt.json").read_text())
    assert meta["method"] == "sttabt" and len(meta["keep_schedule"]) == 3 and meta["preprocessing"]["image"]


def test_official_concrete_trains_calibrated_and_saves(image_dir, tmp_path):
    """--concrete official: init calibrated to the target on hard masks, the official regulariser in the
    soft phase, saved and loaded as the official variant, the hard model near the target."""
    from sttabt_edge.method.concrete_official import OfficialConcrete

    model = vit()
    data = image_data(image_dir, model)
    approx = build_approxnet(model, 4, "interpolate")
    official = SttabtSettings(concrete="official")
    scfg = SparseTrainConfig(sttabt=official, init_schedule="shared", hard_frac=0.25, calib_samples=8)
    train_concrete(model, approx, data, 0.5, cfg(steps=8), scfg=scfg, out=tmp_path / "c")
    logs = [json.loads(ln) for ln in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    soft = [r for r in logs if "retention" in r and not r["hard"]]
    assert soft and all("reg" in r for r in soft)
    sc = load_sttabt(tmp_path / "c")
    reducer = sc.reducer
    assert isinstance(reducer.thresholds, OfficialConcrete) and reducer.thresholds.temperature == 0.1
    with torch.no_grad():
        batch = torch.from_numpy(np.stack(data.source(8, 0, augment=False).get(0)[0]["pixel_values"]))
        out = sc(pixel_values=batch)
    assert abs(float(out.retention.mean()) - 0.5) < 0.15
    with pytest.raises(ValueError, match="concrete must be one of"):
        SttabtSettings(concrete="nope")  # type: ignore[arg-type]


def test_concrete_refuses_unreachable_target_before_training(text_model_dir, glue_dir, tmp_path):
    from sttabt_edge.train.concrete import UnreachableTargetError

    model = tiny_bert()
    data = prepare_data(glue_dir, model, text_model_dir)  # 2-12 word phrases
    with pytest.raises(UnreachableTargetError, match="calibration inputs"):
        train_concrete(
            model, build_approxnet(model, 2, "random"), data, 0.1, cfg(steps=2), out=tmp_path / "c"
        )
    assert latest_checkpoint(tmp_path / "c") is None
