"""train/baselines.py: LTP and top-k baselines trained to a retention target."""

from __future__ import annotations

import pytest
import torch
from trainkit import cfg, image_data, vit

from sttabt_edge.train.artifacts import load_sttabt
from sttabt_edge.train.baselines import train_baseline

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.mark.parametrize("method", ["ltp", "topk"])
def test_baselines_reach_target(image_dir, tmp_path, method):
    model = vit()
    data = image_data(image_dir, model)
    train_baseline(method, model, data, 0.5, cfg(steps=6), out=tmp_path / method)
    sc = load_sttabt(tmp_path / method)
    assert sc.reducer.name == method and not sc.reducer.training
    with torch.no_grad():
        batch = torch.from_numpy(data.source(8, 0, augment=False).get(0)[0]["pixel_values"])
        ret = float(sc(pixel_values=batch).retention.mean())
    assert abs(ret - 0.5) < 0.12
