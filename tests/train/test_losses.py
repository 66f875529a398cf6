"""train/losses.py: the objective's retention penalty is method/concrete.py's retention loss."""

from __future__ import annotations

import pytest
import torch
from trainkit import vit

from sttabt_edge.method.approxnet import build_approxnet
from sttabt_edge.method.concrete import retention_loss
from sttabt_edge.train.concrete import build_objective
from sttabt_edge.train.config import SparseTrainConfig
from sttabt_edge.train.losses import retention_penalty

assert_close = torch.testing.assert_close


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_retention_penalty_is_retention_loss(image_dir):
    model = vit()
    obj = build_objective(model, build_approxnet(model, 4), SparseTrainConfig(init="0.5"))
    obj.on_step(0, 10)
    x = torch.randn(3, 3, 32, 32)
    out = obj.sparse(pixel_values=x)
    assert_close(retention_penalty(out.retention, 0.3), retention_loss(out.keep, out.pad_mask, 0.3))
